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
- ``OTEL_SEMCONV_STABILITY_OPT_IN`` containing ``gen_ai_latest_experimental`` switches to the
  latest (unreleased, still moving) names of the GenAI conventions' own repository, and drops the
  v1.41 ones, as the conventions ask of instrumentations: no ``gen_ai.system``,
  ``gen_ai.usage.cache_write.input_tokens``, per-modality usage attributes, the
  ``gen_ai.client.inference.usage.*`` counters by ``gen_ai.token.modality``, the
  ``gen_ai.client.inference.operation.*_tokens`` and ``gen_ai.client.inference.duration``
  histograms (``gen_ai.client.embeddings.*`` for embeddings). Read when the sink is made.
- The span's start and end are the call's own: a record is made when the call ends
  (``timestamp``) and carries its ``latency_ms``.
- The writer thread's cost is nearly all the SDK's own work per span and per measurement, so the
  sink makes as few of them as the conventions allow: counters are summed over the batch and
  added once per attribute set, and the attribute sets are built once per model and kept.
- Prompts and completions are never exported: records do not hold them.
- An application that already set up OpenTelemetry (its own SDK, Logfire, an agent) keeps its
  providers, exporters and resource: the sink uses the global TracerProvider and MeterProvider,
  and a call made inside one of the application's spans becomes that span's child (its context is
  captured on the caller's thread when the record is submitted, in the context the call was
  made in for a stream; the span itself is made later, on
  the writer thread). Otherwise tokenmeter builds providers of its own (one pair per process)
  with OTLP/HTTP exporters, which read the standard ``OTEL_EXPORTER_OTLP_*``,
  ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` variables (``OTEL_TRACES_EXPORTER`` or
  ``OTEL_METRICS_EXPORTER`` set to ``none`` turns that signal off).
- Exporting happens on the SDK's own threads, batched, with its retries: a collector that is down
  or answers 503 delays nothing but those threads, and spans beyond the SDK's queue are dropped
  by the SDK (its policy), never waited for. With tokenmeter's own providers, exports that failed
  and spans the queue dropped are counted, and ``flush()`` reports them (``_SpanTally``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tokenmeter._fork import renew_after_fork
from tokenmeter._models import UNREADABLE_USAGE, UsageRecord, short_repr
from tokenmeter._registry import canonical

__all__ = [
    "LATEST",
    "OPERATION_NAMES",
    "OPT_IN_VARIABLE",
    "PROVIDER_NAMES",
    "OTelSink",
    "latest_conventions_requested",
    "span_attributes",
]

#: tokenmeter provider (any alias of it) -> ``gen_ai.provider.name``: the conventions'
#: well-known value where they name one, so the calls of each provider meet other
#: instrumentations' under one name (others are passed through as they are). "google" records
#: cover the Gemini API and Vertex AI alike: the spec's name for "backend unknown" is
#: ``gcp.gen_ai``.
PROVIDER_NAMES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "gcp.gen_ai",
    "azure": "azure.ai.openai",
    "aws": "aws.bedrock",
    "mistral": "mistral_ai",
    "x-ai": "x_ai",
}
#: Where the deprecated ``gen_ai.system`` (v1.41) spelled a provider otherwise.
_SYSTEM_NAMES = {"x_ai": "xai"}
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
#: The standard variable, and the value in it that asks for the latest GenAI conventions.
OPT_IN_VARIABLE = "OTEL_SEMCONV_STABILITY_OPT_IN"
LATEST = "gen_ai_latest_experimental"
#: Modalities the latest conventions name usage attributes for.
_SPAN_MODALITIES = frozenset({"text", "image", "audio"})
#: Attribute sets kept per model, operation and error (the SDK itself caps distinct sets at 2000).
_MAX_DIMS = 4096
#: Parent contexts waiting for their record's span; beyond this, the oldest are forgotten.
_MAX_PARENTS = 100_000
_SCOPE = "tokenmeter"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: OTLP times are unsigned 64-bit nanoseconds since 1970: from 1970 to 2554.
_MAX_NS = 2**64 - 1


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
    name = record.model_provider
    return PROVIDER_NAMES.get(canonical(name), name)


def latest_conventions_requested() -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` (a comma-separated list) asks for the latest
    GenAI conventions."""
    value = os.environ.get(OPT_IN_VARIABLE, "")
    return any(part.strip() == LATEST for part in value.split(","))


def span_attributes(record: UsageRecord, *, latest: bool = False) -> dict[str, Any]:
    """The span attributes of ``record``: its tags, then the GenAI conventions' (v1.41, or the
    ``latest`` experimental ones) and tokenmeter's own."""
    provider = _provider(record)
    # The tags first: a span holds a limited number of attributes (128 by default) and the SDK
    # makes room by dropping the oldest, so a record with more tags than fit loses tags, never
    # the conventions' attributes.
    attrs: dict[str, Any] = {f"tokenmeter.tag.{key}": value for key, value in record.tags.items()}
    operation = attrs["gen_ai.operation.name"] = _operation(record)
    attrs["gen_ai.provider.name"] = provider
    if not latest:
        attrs["gen_ai.system"] = _SYSTEM_NAMES.get(provider, provider)
    attrs["gen_ai.request.model"] = record.request_model or record.model_name
    if record.status == "ok" or record.total_tokens:  # a response came (no model without one)
        attrs["gen_ai.response.model"] = record.model_name
    if record.error != UNREADABLE_USAGE:
        # Counts of a usage that could not be read are unknown, not 0: a backend that reads
        # these attributes would show a call that used no tokens.
        attrs.update(_usage_attributes(record, operation, latest=latest))
    attrs["tokenmeter.record.id"] = record.id
    attrs["tokenmeter.provider"] = record.model_provider
    attrs["tokenmeter.streamed"] = record.streamed
    attrs["tokenmeter.estimated"] = record.estimated
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
    if record.status == "blocked":  # "BudgetExceeded: <budget>": the name apart (cardinality)
        attrs["error.type"], _, budget = (record.error or "BudgetExceeded").partition(": ")
        if budget:
            attrs["tokenmeter.budget.name"] = budget
    elif record.error == UNREADABLE_USAGE:
        # The call succeeded, its usage could not be read: no failed call in error-rate
        # dashboards (it was exported as one, status ERROR), and no token counts either.
        attrs["tokenmeter.usage_unreadable"] = True
    elif record.status != "ok":
        attrs["error.type"] = record.error or record.status
    return attrs


def _usage_attributes(record: UsageRecord, operation: str, *, latest: bool) -> dict[str, int]:
    """The ``gen_ai.usage.*`` span attributes of ``record``, by the v1.41 or ``latest``
    conventions' names."""
    attrs = {"gen_ai.usage.input_tokens": record.input_tokens}
    if operation != "embeddings":  # which has no output
        attrs["gen_ai.usage.output_tokens"] = record.output_tokens
    attrs["gen_ai.usage.cache_read.input_tokens"] = record.cache_read_tokens
    if latest:
        attrs["gen_ai.usage.cache_write.input_tokens"] = record.cache_write_tokens
    else:
        attrs["gen_ai.usage.cache_creation.input_tokens"] = record.cache_write_tokens
    attrs["gen_ai.usage.reasoning.output_tokens"] = record.reasoning_tokens
    if latest and record.modalities:
        for key, count in record.modalities.items():
            side, _, modality = key.rpartition("_")  # input_text, cache_read_image...
            if modality in _SPAN_MODALITIES:
                if side == "cache_read":
                    attrs[f"gen_ai.usage.{modality}.cache_read.input_tokens"] = count
                else:
                    attrs[f"gen_ai.usage.{modality}.{side}_tokens"] = count
    return attrs


def _attribute_room() -> int | None:
    """How many attributes a span holds (``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT``, else
    ``OTEL_ATTRIBUTE_COUNT_LIMIT``, else 128); None: no limit, or no SDK to say."""
    try:
        from opentelemetry.sdk.trace import SpanLimits
    except ImportError:  # pragma: no cover - the API alone, with the application's own SDK
        return None
    room: int | None = SpanLimits().max_span_attributes
    return room


#: The conventions' attributes a span keeps longest when it holds few (a low
#: ``OTEL_ATTRIBUTE_COUNT_LIMIT``): what names the call and whether it failed.
_KEPT_LONGEST = (
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "error.type",
)


def _within(attrs: dict[str, Any], room: int) -> dict[str, Any]:
    """``attrs`` cut to ``room`` before the span is made: the SDK would drop the oldest itself,
    the conventions' first, with a warning for each (891 lines for a record with 1,000 tags).
    Left out first: the first tags; then tokenmeter's own attributes, the last first; then the
    conventions' others, the last first; then those of ``_KEPT_LONGEST``, the last first."""
    tags: list[str] = []
    own: list[str] = []
    conventions: list[str] = []
    kept_longest: list[str] = []
    for key in attrs:
        if key.startswith("tokenmeter.tag."):
            tags.append(key)
        elif key.startswith("tokenmeter."):
            own.append(key)
        elif key in _KEPT_LONGEST:
            kept_longest.append(key)
        else:
            conventions.append(key)
    order = [*tags, *reversed(own), *reversed(conventions), *reversed(kept_longest)]
    left_out = set(order[: max(len(attrs) - room, 0)])
    return {key: value for key, value in attrs.items() if key not in left_out}


def _by_modality(total: int, modalities: dict[str, int], side: str) -> list[tuple[str, int]]:
    """``total`` split by ``gen_ai.token.modality`` as the provider reported it; what it did not
    break down (all of it, when it reported nothing) is ``unknown``."""
    prefix = side + "_"
    parts = [(k[len(prefix) :], n) for k, n in modalities.items() if k.startswith(prefix)]
    rest = total - sum(n for _, n in parts)
    if rest > 0 or not parts:
        parts.append(("unknown", max(rest, 0)))
    return parts


class _Dims:
    """The metric attribute sets of one (operation, provider, models, error): built once."""

    __slots__ = ("base", "inference", "input", "ok", "output", "usage")

    def __init__(self, attrs: dict[str, Any], latest: bool) -> None:
        keys = ["gen_ai.operation.name", "gen_ai.provider.name"]
        if not latest:
            keys.append("gen_ai.system")
        keys += ["gen_ai.request.model", "gen_ai.response.model"]
        ok = {key: attrs[key] for key in keys if key in attrs}
        #: Duration and cost: with ``error.type`` for a failed call.
        self.base = {**ok, "error.type": attrs["error.type"]} if "error.type" in attrs else ok
        #: Token histograms (successful calls only).
        self.ok = ok
        self.input = {**ok, "gen_ai.token.type": "input"}
        self.output = {**ok, "gen_ai.token.type": "output"}
        #: Latest usage counters, by modality: made on first use.
        self.usage: dict[str, dict[str, Any]] = {}
        self.inference = attrs["gen_ai.operation.name"] != "embeddings"

    def modality(self, modality: str) -> dict[str, Any]:
        found = self.usage.get(modality)
        if found is None:
            found = self.usage[modality] = {**self.ok, "gen_ai.token.modality": modality}
        return found


def _check_provider(name: str, provider: Any, kind: str, method: str) -> None:
    """ValueError naming the argument ``name`` when ``provider`` (given) has no ``method``: the
    two swapped, or an exporter's name, raised AttributeError from deep inside the sink."""
    if provider is not None and not callable(getattr(provider, method, None)):
        raise ValueError(
            f"{name} must be an OpenTelemetry {kind} (with {method}()), "
            f"got {type(provider).__name__[:100]}"
        )


class OTelSink:
    """Exports every record as an OpenTelemetry GenAI span plus metric points.

    With no arguments, it reuses the application's global providers when it configured any, or
    builds its own OTLP/HTTP exporters (configured by the standard ``OTEL_*`` variables).
    ``tracer_provider`` / ``meter_provider`` choose explicitly (tests, or an application that keeps
    its providers out of the globals).
    """

    def __init__(self, *, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        _check_provider("tracer_provider", tracer_provider, "TracerProvider", "get_tracer")
        _check_provider("meter_provider", meter_provider, "MeterProvider", "get_meter")
        context, metrics, trace = _otel()
        self._context, self._trace, self._metrics = context, trace, metrics
        self._given = (tracer_provider, meter_provider)
        #: Providers tokenmeter built (this sink flushes them), and those it used before the
        #: application set up its own (flushed too, until a flush sent what they hold).
        self._own: list[Any] = []
        self._retired: list[Any] = []
        #: Closed: ``_own`` may be shut down once replaced (taken again, or anew, if reused).
        self._released = False
        self._saw_app = False
        self.latest = latest_conventions_requested()
        self._room = _attribute_room()
        self._bind()
        self._dims: dict[tuple[Any, ...], _Dims] = {}
        #: ``_failed_exports`` when this sink's last flush() returned.
        self._failures_seen = _failed_exports.count
        self._parents: OrderedDict[str, Any] = OrderedDict()
        self._parents_lock = threading.Lock()
        from tokenmeter import _pipeline  # not at import: the pipeline imports the sinks

        self._pipeline = _pipeline
        if len(self._own) < 2:  # the application's providers, which the SDK shuts down at exit
            _pipeline.flush_early_at_exit()
        self._observer: Callable[[object], None] | None = None
        self._unsure = False  # see _after_fork_in_child
        self._observe()
        _register_for_fork(self)

    def _app_set_up(self) -> bool:
        """Whether the application set a global TracerProvider or MeterProvider."""
        return not isinstance(
            self._trace.get_tracer_provider(), self._trace.ProxyTracerProvider
        ) or (type(self._metrics.get_meter_provider()).__name__ != "_ProxyMeterProvider")

    def _bind(self) -> None:
        """Take the providers given, else the application's: its global ones once it set up
        either (the other one too, a no-op until it sets it: an application that traces only
        gets no metrics exporter it never asked for, which failed and held every exit for
        exit_timeout), else tokenmeter's own, until the application sets up its own (a sink
        made before that, at a first call or a configure() in a settings module, kept its own
        for good: the application's collector never saw a span of tokenmeter's)."""
        tracer_provider, meter_provider = self._given
        app = self._app_set_up()
        own = () if app else _own_providers()
        if tracer_provider is None:
            tracer_provider = own[0] if own else self._trace.get_tracer_provider()
        if meter_provider is None:
            meter_provider = own[1] if own else self._metrics.get_meter_provider()
        built = [p for p in own if p is tracer_provider or p is meter_provider]
        with _providers_lock:  # see _shut_down_unused
            if app:  # for good: no sink takes tokenmeter's own from now on
                _providers.clear()
            left = [p for p in self._own if p not in built and p not in _shut_down]
            self._retired += [p for p in left if p not in self._retired]
            self._own = built
            self._released = False
        self._tracer = tracer_provider.get_tracer(_SCOPE)
        meter = meter_provider.get_meter(_SCOPE)
        self._cost = meter.create_counter(
            "tokenmeter.cost", unit="USD", description="Estimated cost of LLM calls"
        )
        if self.latest:
            self._make_latest_instruments(meter)
        else:
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

    def _make_latest_instruments(self, meter: Any) -> None:
        def histogram(name: str, unit: str, description: str, buckets: list[Any]) -> Any:
            return meter.create_histogram(
                name,
                unit=unit,
                description=description,
                explicit_bucket_boundaries_advisory=buckets,
            )

        def counter(name: str, description: str) -> Any:
            return meter.create_counter(name, unit="{token}", description=description)

        prefix = "gen_ai.client.inference"
        self._inference_duration = histogram(
            f"{prefix}.duration", "s", "GenAI inference operation duration", DURATION_BUCKETS
        )
        self._inference_input = histogram(
            f"{prefix}.operation.input_tokens",
            "{token}",
            "The number of input tokens used per inference operation",
            TOKEN_BUCKETS,
        )
        self._inference_output = histogram(
            f"{prefix}.operation.output_tokens",
            "{token}",
            "The number of output tokens used per inference operation",
            TOKEN_BUCKETS,
        )
        self._embeddings_duration = histogram(
            "gen_ai.client.embeddings.duration",
            "s",
            "GenAI client embeddings operation duration",
            DURATION_BUCKETS,
        )
        self._embeddings_input = histogram(
            "gen_ai.client.embeddings.operation.input_tokens",
            "{token}",
            "The number of input tokens used per embeddings operation",
            TOKEN_BUCKETS,
        )
        self._usage_input = counter(
            f"{prefix}.usage.input_tokens", "The number of input tokens used, cached included"
        )
        self._usage_output = counter(
            f"{prefix}.usage.output_tokens", "The number of output tokens used, reasoning included"
        )
        self._usage_cache_read = counter(
            f"{prefix}.usage.cache_read.input_tokens", "The number of input tokens read from cache"
        )
        self._usage_cache_write = counter(
            f"{prefix}.usage.cache_write.input_tokens",
            "The number of input tokens written to cache",
        )
        self._usage_reasoning = counter(
            f"{prefix}.usage.reasoning.output_tokens", "The number of reasoning output tokens"
        )

    def _observe(self) -> None:
        # Also when its observer is no longer listed: the tests' reset forgets every observer,
        # a live sink's too, which then never saw a parent span again.
        if self._observer is None or not self._pipeline.observes(self._observer):
            self._observer = _weak_observer(self)
            self._pipeline.add_submit_observer(self._observer, owner=self)

    def _after_fork_in_child(self) -> None:
        """A forked child uses a sink the application configured again, but the pipeline forgot
        the parent's watches (its calls were no child of the spans they were made in there), a
        lock another thread held at the fork stays held for ever, and the parents kept are the
        parent's calls, never written here."""
        self._parents_lock = threading.Lock()
        self._parents = OrderedDict()
        if self._observer is not None:  # observing in the parent (a closed sink stays closed)
            self._observer = None
            self._observe()
            # The parent's sinks made from names are not the child's (it makes its own), and
            # one kept alive would hold the span of every call made in one: it watches only once
            # the child's pipeline writes to it.
            self._unsure = True

    def _in_use(self) -> bool:
        """In a forked child: whether its pipeline writes to this sink (known for good once it
        does)."""
        if any(writer.sink is self for writer in self._pipeline._writers()):
            self._unsure = False
        return not self._unsure

    # -- the caller's thread ---------------------------------------------------------------------
    def _capture_parent(self, item: object) -> None:
        """Remember the caller's active span for ``item`` (only when there is one)."""
        if self._own and not self._saw_app and self._app_set_up():
            # The next write takes the application's providers (``_bind``), which the SDK shuts
            # down at exit: what is queued is flushed before that.
            self._saw_app = True
            self._pipeline.flush_early_at_exit()
        if type(item) is not UsageRecord or (self._unsure and not self._in_use()):
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
        if self._own and self._app_set_up():  # the application set up OpenTelemetry since
            self._bind()
            self._pipeline.flush_early_at_exit()
        elif self._own and not self._keep_own():
            self._bind()
        client = self._trace.SpanKind.CLIENT
        error = self._trace.Status(self._trace.StatusCode.ERROR)
        latest, room = self.latest, self._room
        #: Counter amounts summed over the batch, added once per (counter, attribute set).
        sums: dict[tuple[Any, int], list[Any]] = {}
        try:
            for record in records:
                with self._parents_lock:
                    parent = self._parents.pop(record.id, None)
                ended = record.timestamp
                if ended.tzinfo is None:  # a record built by hand: naive means UTC, as in _models
                    ended = ended.replace(tzinfo=UTC)
                end_ns = (ended - _EPOCH) // _MICROSECOND * 1000  # exact, no float rounding
                start_ns = end_ns - round((record.latency_ms or 0.0) * 1e6)
                if start_ns < 0 or end_ns > _MAX_NS:
                    # A record dated where OTLP has no time (``record(timestamp=...)`` takes
                    # any date): the exporter would fail to encode, and drop, every span of
                    # the batch it is in. It is exported at the nearest time OTLP holds.
                    start_ns, end_ns = (min(max(ns, 0), _MAX_NS) for ns in (start_ns, end_ns))
                attrs = span_attributes(record, latest=latest)
                # Only the span's attributes are cut to its room: the span's name and the
                # metrics' dimensions are made of the whole set.
                held = attrs if room is None or len(attrs) <= room else _within(attrs, room)
                span = self._tracer.start_span(
                    f"{attrs['gen_ai.operation.name']} {attrs['gen_ai.request.model']}",
                    context=parent,
                    kind=client,
                    attributes=held,
                    start_time=start_ns,
                )
                if record.status != "ok" and record.error != UNREADABLE_USAGE:
                    span.set_status(error)
                span.end(end_time=end_ns)
                dims = self._dims_of(attrs)
                if latest:
                    self._measure_latest(record, dims, sums)
                else:
                    self._measure(record, dims)
                if record.estimated_cost_usd is not None:
                    _add(sums, self._cost, dims.base, record.estimated_cost_usd)
        finally:  # what was exported is counted, even when a later record failed
            for (counter, _), (dims_of_sum, amount) in sums.items():
                counter.add(float(amount) if counter is self._cost else amount, dims_of_sum)

    def _dims_of(self, attrs: dict[str, Any]) -> _Dims:
        key = (
            attrs["gen_ai.operation.name"],
            attrs["gen_ai.provider.name"],
            attrs["gen_ai.request.model"],
            attrs.get("gen_ai.response.model"),
            attrs.get("error.type"),
        )
        found = self._dims.get(key)
        if found is None:
            if len(self._dims) >= _MAX_DIMS:
                self._dims.clear()
            found = self._dims[key] = _Dims(attrs, self.latest)
        return found

    def _measure(self, record: UsageRecord, dims: _Dims) -> None:
        """The v1.41 histograms."""
        if record.latency_ms is not None:
            self._duration.record(record.latency_ms / 1000, dims.base)
        if record.status == "ok":
            self._tokens.record(record.input_tokens, dims.input)
            if dims.inference:  # embeddings have no output
                self._tokens.record(record.output_tokens, dims.output)

    def _measure_latest(
        self, record: UsageRecord, dims: _Dims, sums: dict[tuple[Any, int], list[Any]]
    ) -> None:
        """The latest conventions' histograms, and their usage counters (summed in ``sums``)."""
        ok = record.status == "ok"
        if not dims.inference:  # embeddings have metrics of their own
            if record.latency_ms is not None:
                self._embeddings_duration.record(record.latency_ms / 1000, dims.base)
            if ok:
                self._embeddings_input.record(record.input_tokens, dims.ok)
            return
        if record.latency_ms is not None:
            self._inference_duration.record(record.latency_ms / 1000, dims.base)
        if ok:
            self._inference_input.record(record.input_tokens, dims.ok)
            self._inference_output.record(record.output_tokens, dims.ok)
        modalities = record.modalities
        # Every inference operation, failed ones too (0 under "unknown" when nothing was used).
        for modality, count in _by_modality(record.input_tokens, modalities, "input"):
            _add(sums, self._usage_input, dims.modality(modality), count)
        for modality, count in _by_modality(record.output_tokens, modalities, "output"):
            _add(sums, self._usage_output, dims.modality(modality), count)
        if record.cache_read_tokens:
            parts = _by_modality(record.cache_read_tokens, modalities, "cache_read")
            for modality, count in parts:
                _add(sums, self._usage_cache_read, dims.modality(modality), count)
        if record.cache_write_tokens:
            unknown = dims.modality("unknown")
            _add(sums, self._usage_cache_write, unknown, record.cache_write_tokens)
        if record.reasoning_tokens:
            unknown = dims.modality("unknown")
            _add(sums, self._usage_reasoning, unknown, record.reasoning_tokens)

    def flush(self) -> None:
        """Hand what is batched to tokenmeter's own exporters (the application's are its own),
        and raise when they did not deliver everything since the last flush: an export the
        collector did not take (down, refusing) is dropped by the OpenTelemetry SDK, and
        ``tokenmeter.flush()`` must not say it was written."""
        ended = _spans.ended  # before the flush: every one of these is exported, or dropped
        retired = list(self._retired)
        providers = [p for p in dict.fromkeys((*self._own, *retired)) if p not in _shut_down]
        unfinished = [type(p).__name__ for p in providers if p.force_flush() is False]
        failed = _failed_exports.count
        lost, self._failures_seen = failed - self._failures_seen, failed
        dropped = 0 if unfinished else _spans.dropped_since_asked(ended)
        problems = []
        if lost:
            problems.append(
                f"{lost} OTLP exports since the last flush did not reach the collector (down, "
                "or refusing them): their spans or metric points are lost"
            )
        if dropped:
            problems.append(
                f"{dropped} spans were dropped by the OpenTelemetry SDK's queue before export "
                "(the collector took them slower than they came; OTEL_BSP_MAX_QUEUE_SIZE sets "
                "the queue's size)"
            )
        if problems:
            raise ConnectionError("; ".join(problems))
        if unfinished:
            raise TimeoutError(f"{', '.join(unfinished)} did not finish exporting in time")
        if retired:
            self._let_go(retired)

    def _let_go(self, providers: list[Any]) -> None:
        """Forget ``providers`` (tokenmeter's own it no longer writes to), now that a flush sent
        all they held: they are shut down once no sink needs them (``_shut_down_unused``)."""
        with _providers_lock:
            self._retired = [p for p in self._retired if p not in providers]
            _shut_down_unused(providers)

    def _holds(self, provider: Any) -> bool:
        """Whether this sink writes to ``provider`` or has yet to flush it."""
        return provider in self._retired or (provider in self._own and not self._released)

    def _keep_own(self) -> bool:
        """Whether this sink writes to its own providers still: they are those a sink made now
        takes. Not when another configuration of the ``OTEL_*`` variables replaced them (a sink
        made since built new ones), nor in a forked child (the parent's)."""
        with _providers_lock:  # a closed sink's own are taken back before a shutdown can start
            if _current(self._own):
                self._released = False
                return True
        return False

    def close(self) -> None:
        """Flush and stop observing calls. The application's providers stay up (shut down by
        the SDK at exit), and so do tokenmeter's own while they are current (shared): once
        replaced, they are shut down after this flush. ``configure()`` closes the sinks it
        replaces, and may use this one again (it then takes the current ones)."""
        if self._observer is not None:
            self._pipeline.remove_submit_observer(self._observer)
            self._observer = None
        try:
            self.flush()
        finally:  # a flush the collector refused too: kept, they re-sent stale totals for ever
            with _providers_lock:
                self._released = True
                retired, self._retired = self._retired, []
                _shut_down_unused([*self._own, *retired])


def _weak_observer(sink: OTelSink) -> Callable[[object], None]:
    """``sink._capture_parent`` without keeping ``sink`` alive: a sink never configured (made for
    a ``configure()`` call that was refused) is collected, rather than kept by its watch with the
    contexts, spans and all, of every record made in a span. Its observer then does nothing."""
    found = weakref.ref(sink)

    def observe(item: object) -> None:
        alive = found()
        if alive is not None:
            alive._capture_parent(item)

    return observe


def _add(
    sums: dict[tuple[Any, int], list[Any]], counter: Any, dims: dict[str, Any], n: Any
) -> None:
    """Add ``n`` to what ``counter`` gets for ``dims`` at the end of the batch."""
    key = (counter, id(dims))  # dims are kept in the sink's cache: the same set, the same object
    found = sums.get(key)
    if found is None:
        sums[key] = [dims, n]
    else:
        found[1] += n


#: Every sink of the process, for the fork hook below.
_sinks: weakref.WeakSet[OTelSink] = weakref.WeakSet()
_fork_hooked: list[bool] = []


def _register_for_fork(sink: OTelSink) -> None:
    """Have ``sink`` set up anew in a forked child. Hooked once, after the pipeline's own (made
    before any sink): hooks run in order in the child, and the pipeline's forgets every watch."""
    _sinks.add(sink)
    if not _fork_hooked:
        _fork_hooked.append(True)
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _after_fork_in_child() -> None:
    for sink in list(_sinks):
        sink._after_fork_in_child()


_providers: dict[tuple[tuple[str, str], ...], tuple[Any, Any]] = {}
_providers_lock = threading.Lock()
# A child forked while another thread was building them would find the lock held for ever.
renew_after_fork(globals(), "_providers_lock", threading.Lock)


#: tokenmeter's own providers shut down (or being shut down), and in a forked child the
#: parent's: never flushed, taken or shut down again.
_shut_down: weakref.WeakSet[Any] = weakref.WeakSet()


def _leave_the_parents_providers() -> None:
    """In a forked child, the copies of the parent's providers are the parent's. They hold the
    parent's cumulative totals, which the child would export again as its own (under the
    child's ``service.instance.id``: summed over the instances, the parent's calls once more per
    worker): the child builds its own, which its sinks take at their next write (``_current``),
    and the parent's send nothing from the child (``_Outlet``). Nor are they ever flushed or
    shut down here: a fork made during an export copies the export lock the parent's metric
    reader holds for it, held for ever in the child (the SDK renews its thread at fork, not
    that lock), and a flush of them hung the child's writer for good. The span tally starts
    anew too: the spans the parent's queue held are never exported from the child, and were
    reported there as dropped."""
    _providers.clear()
    for provider in list(_outlets):
        _shut_down.add(provider)
    _spans.restart()


def _current(providers: Sequence[Any]) -> bool:
    """Whether ``providers`` (tokenmeter's own) are those a sink made now would take."""
    current = [provider for pair in _providers.values() for provider in pair]
    return all(provider in current for provider in providers)


def _own_providers() -> tuple[Any, Any]:
    """The TracerProvider and MeterProvider (OTLP/HTTP) tokenmeter builds when the application
    set none: one pair per process, shared by every OTelSink (a ``configure()`` call makes new
    sinks; it must not make new exporter threads each time). A sink made after an ``OTEL_*``
    variable changed builds a new pair that replaces it: the sinks still on the old one take the
    new one at their next write, and the old one is shut down once no sink needs it. Two pairs
    would write the same metric series (the resource, with its ``service.instance.id``, is the
    process's), each its own totals.

    Never shut down by the SDK's exit hook: registered after tokenmeter's, it would run before
    tokenmeter's exit flush and drop the spans of the records still queued. That flush hands them
    to the exporters (``OTelSink.flush``), within ``exit_timeout`` like every sink's. tokenmeter
    shuts down those no sink uses any more, after their last flush (``_shut_down_unused``)."""
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("OTEL_")))
    with _providers_lock:
        found = _providers.get(key)
        if found is None:
            made = (_new_tracer_provider(), _new_meter_provider())
            replaced = [provider for pair in _providers.values() for provider in pair]
            _providers.clear()
            found = _providers[key] = made
            _shut_down_unused(replaced)
        return found


def _shut_down_unused(providers: Sequence[Any]) -> None:
    """Shut down those of ``providers`` (tokenmeter's own, each flushed by the last sink that
    wrote to it) that no sink writes to or has yet to flush, and that no new sink would take.
    Kept, a retired MeterProvider exported its cumulative totals every interval for the life of
    the process, in the very series the application's providers write (the same resource,
    scope and attributes): two writers, the value flipping between two totals, neither right.

    Called with ``_providers_lock`` held (a sink's ``_bind`` moves what it holds under it). Its
    exporters are silenced first (``_Outlet``): the shutdown's last export would send again
    what the flush sent, maybe after the application's newer total. The shutdown itself runs
    on a thread of its own: it waits for the provider's export threads, and neither a call of
    the application nor a sink's writer may wait for a hung collector."""
    current = [provider for pair in _providers.values() for provider in pair]
    unused = [
        provider
        for provider in dict.fromkeys(providers)
        if provider not in current
        and provider not in _shut_down
        and not any(sink._holds(provider) for sink in list(_sinks))
    ]
    if not unused:
        return
    for provider in unused:
        _shut_down.add(provider)
        _outlets[provider].close()
    shutting = threading.Thread(
        target=_shut_down_all, args=(unused,), name="tokenmeter-otel-shutdown", daemon=True
    )
    with contextlib.suppress(RuntimeError):  # no thread starts at interpreter exit: none needed
        shutting.start()


def _shut_down_all(providers: Sequence[Any]) -> None:
    for provider in providers:
        with contextlib.suppress(Exception):  # the SDK logs what failed
            provider.shutdown()


class _Failures:
    """Exports of tokenmeter's own exporters that failed, counted from the exporters' threads."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.count += 1

    def checked(self, export: Callable[..., Any], success: Any, *args: Any, **kwargs: Any) -> Any:
        """An exporter's ``export(*args, **kwargs)``, counted when it is not ``success``."""
        try:
            result = export(*args, **kwargs)
        except BaseException:
            self.add()
            raise
        if result is not success:
            self.add()
        return result


_failed_exports = _Failures()
renew_after_fork(_failed_exports.__dict__, "_lock", threading.Lock)


class _Outlet:
    """Whether an exporter of tokenmeter's own sends: only in the process that built it, and
    until its provider is retired (``_shut_down_unused``). The OpenTelemetry SDK starts its
    export threads again in a forked child, where the copies of the parent's providers hold the
    parent's totals and queue: sent from there, they would be counted again under the child's
    ``service.instance.id``."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._closed = False

    def open(self) -> bool:
        return not self._closed and os.getpid() == self._pid

    def close(self) -> None:
        self._closed = True


#: The outlet of each provider tokenmeter built.
_outlets: weakref.WeakKeyDictionary[Any, _Outlet] = weakref.WeakKeyDictionary()


class _SpanTally:
    """Spans of tokenmeter's own TracerProviders handed to their batch processor (``ended``) and
    to their exporter (``exported``, whether the collector took them or not): once a flush has
    exported everything queued, those ended before it and never exported were dropped by the
    processor's queue, which the SDK only logs. Counted here, without the SDK's internals."""

    def __init__(self) -> None:
        self.ended = 0
        self.exported = 0
        self.reported = 0
        self._lock = threading.Lock()

    def restart(self) -> None:
        """Count from zero: a forked child, where only the forking thread runs yet."""
        self.ended = self.exported = self.reported = 0

    def end(self) -> None:
        with self._lock:
            self.ended += 1

    def export(self, spans: Sequence[Any]) -> None:
        with self._lock:
            self.exported += len(spans)

    def dropped_since_asked(self, ended: int) -> int:
        """Spans among the first ``ended`` that were never exported and not reported yet."""
        with self._lock:
            dropped = max(0, ended - self.exported - self.reported)
            self.reported += dropped
            return dropped


_spans = _SpanTally()
renew_after_fork(_spans.__dict__, "_lock", threading.Lock)
os.register_at_fork(after_in_child=_leave_the_parents_providers)


def _exporter_class(signal: str, module: str, name: str) -> Any:
    """The OTLP exporter class for ``signal`` ("TRACES", "METRICS") in the protocol that
    ``OTEL_EXPORTER_OTLP_<signal>_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL`` names:
    ``http/protobuf`` (the default) or ``grpc`` (its package installed). Another one was
    ignored, and a gRPC collector got nothing, a cryptic BadStatusLine in the logs."""
    variable = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
    if not os.environ.get(variable, "").strip():
        variable = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = os.environ.get(variable, "").strip().lower() or "http/protobuf"
    if protocol not in ("http/protobuf", "grpc"):
        raise ValueError(
            f"{variable}={short_repr(protocol)}: tokenmeter's exporters speak http/protobuf or grpc"
        )
    kind = "grpc" if protocol == "grpc" else "http"
    try:
        found = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{kind}.{module}")
    except ImportError:
        raise ImportError(
            f"{variable}={protocol} needs the exporter package: pip install "
            f"opentelemetry-exporter-otlp-proto-{kind}"
        ) from None
    return getattr(found, name)


def _new_tracer_provider() -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

    outlet = _Outlet()

    class Exporter(_exporter_class("TRACES", "trace_exporter", "OTLPSpanExporter")):  # type: ignore[misc]
        def export(self, spans: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
            _spans.export(spans)
            if not outlet.open():
                return SpanExportResult.SUCCESS
            return _failed_exports.checked(
                super().export, SpanExportResult.SUCCESS, spans, *args, **kwargs
            )

    class Processor(BatchSpanProcessor):
        def on_end(self, span: Any) -> None:
            if span.context is not None and span.context.trace_flags.sampled:
                _spans.end()  # what the batch processor takes: a sampled span
            super().on_end(span)

    provider = TracerProvider(resource=Resource.create(), shutdown_on_exit=False)
    if _exporting("TRACES"):
        provider.add_span_processor(Processor(Exporter()))
    _outlets[provider] = outlet
    return provider


def _new_meter_provider() -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    outlet = _Outlet()

    class Exporter(_exporter_class("METRICS", "metric_exporter", "OTLPMetricExporter")):  # type: ignore[misc]
        def export(self, *args: Any, **kwargs: Any) -> Any:
            if not outlet.open():
                return MetricExportResult.SUCCESS
            return _failed_exports.checked(
                super().export, MetricExportResult.SUCCESS, *args, **kwargs
            )

    readers = [PeriodicExportingMetricReader(Exporter())] if _exporting("METRICS") else []
    provider = MeterProvider(
        resource=Resource.create(), metric_readers=readers, shutdown_on_exit=False
    )
    _outlets[provider] = outlet
    return provider


def _exporting(signal: str) -> bool:
    """False when ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` is ``none``: the standard
    way to turn a signal off (a backend that takes traces only), where an exporter would send
    to an endpoint nobody listens on, warn every minute and hold every exit up to
    ``exit_timeout`` with its retries. Any other value is OTLP, the one exporter built here."""
    value = os.environ.get(f"OTEL_{signal}_EXPORTER", "")
    return [part.strip().lower() for part in value.split(",") if part.strip()] != ["none"]
