"""OpenTelemetry sink: every record as a GenAI span and metric points, for the stack a team has.

Why it is shaped this way:
- Names follow the OpenTelemetry GenAI semantic conventions as released in v1.41 (what the Python
  semantic-conventions package, dashboards and backends read today): one ``CLIENT`` span per call
  named ``"{operation} {model}"``, ``gen_ai.provider.name`` and the older ``gen_ai.system`` both
  set, the usage counts, and the ``gen_ai.client.token.usage`` and
  ``gen_ai.client.operation.duration`` histograms with the spec's bucket boundaries. The
  conventions have no cost attribute yet, so cost goes under tokenmeter's own names
  (``tokenmeter.cost.*`` and the ``tokenmeter.cost`` counter), and an unpriced call gets none
  (never a silent 0).
- The span's start and end are the call's own: a record is made when the call ends
  (``timestamp``) and carries its ``latency_ms``.
- Prompts and completions are never exported: records do not hold them.
- An application that already set up OpenTelemetry (its own SDK, Logfire, an agent) keeps its
  providers, exporters and resource: the sink uses the global TracerProvider and MeterProvider,
  and a call made inside one of the application's spans becomes that span's child (its context is
  captured on the caller's thread when the record is submitted; the span itself is made later, on
  the writer thread). Otherwise tokenmeter builds providers of its own (one pair per process)
  with OTLP/HTTP exporters, which read the standard ``OTEL_EXPORTER_OTLP_*``,
  ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` variables.
- Exporting happens on the SDK's own threads, batched, with its retries: a collector that is down
  or answers 503 delays nothing but those threads, and spans beyond the SDK's queue are dropped
  by the SDK (its policy), never waited for.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tokenmeter._models import UsageRecord

__all__ = ["OPERATION_NAMES", "PROVIDER_NAMES", "OTelSink", "span_attributes"]

#: tokenmeter provider -> ``gen_ai.provider.name`` (others are passed through as they are).
#: "google" records cover the Gemini API and Vertex AI alike: the spec's name for "backend
#: unknown" is ``gcp.gen_ai``.
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "google": "gcp.gen_ai"}
#: tokenmeter operation -> ``gen_ai.operation.name`` (well-known values of the spec).
OPERATION_NAMES = {
    "chat.completions": "chat",
    "responses": "chat",
    "messages": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "embed_content": "embeddings",
    "generate_content": "generate_content",
}
#: The spec's advisory bucket boundaries (v1.41 ``gen_ai.client.*`` metrics).
TOKEN_BUCKETS = [4**i for i in range(14)]  # 1, 4, 16 ... 67108864
DURATION_BUCKETS = [0.01 * 2**i for i in range(14)]  # 0.01, 0.02, 0.04 ... 81.92
#: Parent contexts waiting for their record's span; beyond this, the oldest are forgotten.
_MAX_PARENTS = 100_000
_SCOPE = "tokenmeter"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _otel() -> Any:
    try:
        from opentelemetry import context, metrics, trace
    except ImportError:  # pragma: no cover - depends on the extras installed
        raise ImportError(
            "the OpenTelemetry sink needs opentelemetry-sdk: pip install 'tokenmeter[otel]'"
        ) from None
    return context, metrics, trace


def _operation(record: UsageRecord) -> str:
    op = record.operation
    return OPERATION_NAMES.get(op, op) if op else "chat"


def _provider(record: UsageRecord) -> str:
    return PROVIDER_NAMES.get(record.model_provider, record.model_provider)


def span_attributes(record: UsageRecord) -> dict[str, Any]:
    """The span attributes of ``record``: GenAI conventions, then tokenmeter's own."""
    provider = _provider(record)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": _operation(record),
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": record.request_model or record.model_name,
        "gen_ai.response.model": record.model_name,
        "gen_ai.usage.input_tokens": record.input_tokens,
        "gen_ai.usage.output_tokens": record.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": record.cache_read_tokens,
        "gen_ai.usage.cache_creation.input_tokens": record.cache_write_tokens,
        "gen_ai.usage.reasoning.output_tokens": record.reasoning_tokens,
        "tokenmeter.record.id": record.id,
        "tokenmeter.provider": record.model_provider,
        "tokenmeter.streamed": record.streamed,
        "tokenmeter.estimated": record.estimated,
    }
    if record.request_id is not None:
        attrs["gen_ai.response.id"] = record.request_id
    if record.operation:
        attrs["tokenmeter.operation"] = record.operation
    if record.estimated_cost_usd is not None:
        attrs["tokenmeter.cost.amount"] = float(record.estimated_cost_usd)
        attrs["tokenmeter.cost.currency"] = "USD"
        if record.price_source:
            attrs["tokenmeter.cost.source"] = record.price_source
    if record.session_id is not None:
        attrs["gen_ai.conversation.id"] = record.session_id
        attrs["session.id"] = record.session_id
    if record.session_name is not None:
        attrs["tokenmeter.session.name"] = record.session_name
    for key, value in record.tags.items():
        attrs[f"tokenmeter.tag.{key}"] = value
    if record.status != "ok":
        attrs["error.type"] = record.error or record.status
    return attrs


class OTelSink:
    """Exports every record as an OpenTelemetry GenAI span plus metric points.

    With no arguments, it reuses the application's global providers when it configured any, or
    builds its own OTLP/HTTP exporters (configured by the standard ``OTEL_*`` variables).
    ``tracer_provider`` / ``meter_provider`` choose explicitly (tests, or an application that keeps
    its providers out of the globals).
    """

    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        context, metrics, trace = _otel()
        self._context, self._trace = context, trace
        self._own: list[Any] = []  # providers tokenmeter built: this sink flushes them
        if tracer_provider is None:
            tracer_provider = trace.get_tracer_provider()
            if isinstance(tracer_provider, trace.ProxyTracerProvider):  # none set globally
                tracer_provider = _own_providers()[0]
                self._own.append(tracer_provider)
        if meter_provider is None:
            meter_provider = metrics.get_meter_provider()
            if type(meter_provider).__name__ == "_ProxyMeterProvider":  # none set globally
                meter_provider = _own_providers()[1]
                self._own.append(meter_provider)
        self._tracer = tracer_provider.get_tracer(_SCOPE)
        meter = meter_provider.get_meter(_SCOPE)
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Measures number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._cost = meter.create_counter(
            "tokenmeter.cost", unit="USD", description="Estimated cost of LLM calls"
        )
        self._parents: OrderedDict[str, Any] = OrderedDict()
        self._parents_lock = threading.Lock()
        from tokenmeter import _pipeline  # not at import: the pipeline imports the sinks

        self._pipeline = _pipeline
        self._observing = False
        self._observe()

    def _observe(self) -> None:
        if not self._observing:
            self._observing = True
            self._pipeline.add_submit_observer(self._capture_parent)

    # -- the caller's thread ---------------------------------------------------------------------
    def _capture_parent(self, item: object) -> None:
        """Remember the caller's active span for ``item`` (only when there is one)."""
        if type(item) is not UsageRecord:
            return
        current = self._context.get_current()
        if not self._trace.get_current_span(current).get_span_context().is_valid:
            return
        with self._parents_lock:
            self._parents[item.id] = current
            if len(self._parents) > _MAX_PARENTS:
                self._parents.popitem(last=False)

    # -- the Sink protocol (writer thread) -------------------------------------------------------
    def write(self, records: Sequence[UsageRecord]) -> None:
        self._observe()  # again, if this sink was closed and is used anew (configure() again)
        client = self._trace.SpanKind.CLIENT
        for record in records:
            with self._parents_lock:
                parent = self._parents.pop(record.id, None)
            ended = record.timestamp
            if ended.tzinfo is None:  # a record built by hand: naive means UTC, as in _models
                ended = ended.replace(tzinfo=UTC)
            end_ns = (ended - _EPOCH) // _MICROSECOND * 1000  # exact, no float rounding
            seconds = (record.latency_ms or 0.0) / 1000
            attrs = span_attributes(record)
            span = self._tracer.start_span(
                f"{attrs['gen_ai.operation.name']} {attrs['gen_ai.request.model']}",
                context=parent,
                kind=client,
                attributes=attrs,
                start_time=end_ns - round((record.latency_ms or 0.0) * 1e6),
            )
            if record.status != "ok":
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
            span.end(end_time=end_ns)
            self._measure(record, attrs, seconds)

    def _measure(self, record: UsageRecord, attrs: dict[str, Any], seconds: float) -> None:
        dims: dict[str, Any] = {
            key: attrs[key]
            for key in (
                "gen_ai.operation.name",
                "gen_ai.provider.name",
                "gen_ai.system",
                "gen_ai.request.model",
                "gen_ai.response.model",
                "error.type",
            )
            if key in attrs
        }
        if record.latency_ms is not None:
            self._duration.record(seconds, dims)
        if record.status == "ok":
            dims.pop("error.type", None)
            inputs: dict[str, Any] = {**dims, "gen_ai.token.type": "input"}
            outputs: dict[str, Any] = {**dims, "gen_ai.token.type": "output"}
            self._tokens.record(record.input_tokens, inputs)
            self._tokens.record(record.output_tokens, outputs)
        if record.estimated_cost_usd is not None:
            self._cost.add(float(record.estimated_cost_usd), dims)

    def flush(self) -> None:
        """Hand what is batched to tokenmeter's own exporters (the application's are its own)."""
        for provider in self._own:
            provider.force_flush()

    def close(self) -> None:
        """Flush and stop observing calls. The providers stay up (shared, and shut down by the
        SDK at exit): ``configure()`` closes the sinks it replaces, and may use this one again."""
        self._pipeline.remove_submit_observer(self._capture_parent)
        self._observing = False
        self.flush()


_providers: dict[tuple[tuple[str, str], ...], tuple[Any, Any]] = {}
_providers_lock = threading.Lock()


def _own_providers() -> tuple[Any, Any]:
    """The TracerProvider and MeterProvider (OTLP/HTTP) tokenmeter builds when the application
    set none: one pair per process and ``OTEL_*`` configuration, shared by every OTelSink (a
    ``configure()`` call makes new sinks; it must not make new exporter threads each time)."""
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("OTEL_")))
    with _providers_lock:
        found = _providers.get(key)
        if found is None:
            found = _providers[key] = (_new_tracer_provider(), _new_meter_provider())
        return found


def _new_tracer_provider() -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def _new_meter_provider() -> Any:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    return MeterProvider(resource=Resource.create(), metric_readers=[reader])
