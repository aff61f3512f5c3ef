"""OTelSink on the wire: the real OTLP/HTTP exporters send to a loopback receiver that decodes the
protobuf bodies; and inside an application that configured OpenTelemetry itself (a subprocess:
the global providers can be set once per process)."""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "opentelemetry.sdk", reason="opentelemetry-sdk is not installed (tokenmeter[otel])"
)
pytest.importorskip("opentelemetry.proto", reason="opentelemetry-proto is not installed")

from helpers import one_line_value_error, wait_for
from otlp_receiver import OtlpReceiver, attributes
from sink_helpers import build_record

import tokenmeter
from tokenmeter._registry import canonical
from tokenmeter.sinks.otel import DURATION_BUCKETS, TOKEN_BUCKETS
from tokenmeter.testing import FakeProvider

HERE = Path(__file__).resolve().parent
PROMPT = "a secret prompt that must never leave the process"
ANSWER_MARK = "fake"  # FakeProvider's completions mention it


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    found = OtlpReceiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", found.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout-api")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test,team=search")
    monkeypatch.setenv("TOKENMETER_SINKS", "otel")
    yield found
    tokenmeter.configure(sinks=[])
    _shut_down_own_providers()
    found.close()


def _shut_down_own_providers() -> None:
    """tokenmeter's own providers live for the process; each test here has its own endpoint."""
    from tokenmeter.sinks import otel

    for tracer_provider, meter_provider in otel._providers.values():
        tracer_provider.shutdown()
        meter_provider.shutdown()
    otel._providers.clear()


def _one_call() -> None:
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "cached_tokens": 1000,
        "reasoning_tokens": 120,
    }
    tokenmeter.instrument()
    with (
        FakeProvider(openai_usage=usage) as fake,
        tokenmeter.session("checkout", tags={"feature": "cart"}),
    ):
        fake.openai_client().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": PROMPT}]
        )


def test_a_call_whose_usage_could_not_be_read_is_no_failed_call(receiver: OtlpReceiver) -> None:
    """A call that succeeded but answered usage that cannot be read (recorded with status
    "error", error "UnreadableUsage", cost unknown) was exported as a failed call: span status
    ERROR and an ``error.type`` duration point, so GenAI error-rate dashboards counted
    tokenmeter's metering failure as the application's. It is flagged instead, with no counts."""
    import httpx2
    import openai

    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [],
        "usage": {"prompt_tokens": -5, "completion_tokens": 3, "total_tokens": -2},
    }
    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://fake.local/v1",
        http_client=httpx2.Client(
            transport=httpx2.MockTransport(lambda _: httpx2.Response(200, json=body))
        ),
    )
    tokenmeter.instrument()
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": PROMPT}])
    assert tokenmeter.flush(timeout=60)
    [span] = receiver.spans()
    attrs = attributes(span.attributes)
    assert span.status.code == 0  # unset: the call did not fail
    assert "error.type" not in attrs and attrs["tokenmeter.usage_unreadable"] is True
    # unknown counts, not 0 tokens (team.md: "no token counts")
    assert not [key for key in attrs if key.startswith("gen_ai.usage.")]
    [duration] = receiver.metric_points("gen_ai.client.operation.duration")
    assert "error.type" not in attributes(duration.attributes)
    assert receiver.metric_points("gen_ai.client.token.usage") == []


def test_a_call_arrives_as_a_genai_span_and_metrics(receiver: OtlpReceiver) -> None:
    _one_call()
    assert tokenmeter.flush(timeout=60)
    [span] = receiver.spans()
    attrs = attributes(span.attributes)
    assert span.name == "chat gpt-4o"
    assert span.kind == 3  # SPAN_KIND_CLIENT
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o"
    assert attrs["gen_ai.response.model"].startswith("gpt-4o")
    assert attrs["gen_ai.usage.input_tokens"] == 1200
    assert attrs["gen_ai.usage.output_tokens"] == 300
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 1000
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == 0
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 120
    assert attrs["tokenmeter.cost.amount"] > 0
    assert attrs["tokenmeter.cost.currency"] == "USD"
    assert attrs["tokenmeter.session.name"] == "checkout"
    assert attrs["gen_ai.conversation.id"] == attrs["session.id"]
    assert attrs["tokenmeter.tag.feature"] == "cart"
    resource = attributes(receiver.traces[0].resource_spans[0].resource.attributes)
    assert resource["service.name"] == "checkout-api"
    assert resource["deployment.environment"] == "test"

    # The span lasts as long as the call did, and ends when its record was made.
    [record_latency_ns] = [span.end_time_unix_nano - span.start_time_unix_nano]
    assert record_latency_ns > 0

    tokens = receiver.metric_points("gen_ai.client.token.usage")
    by_type = {attributes(p.attributes)["gen_ai.token.type"]: p for p in tokens}
    assert by_type["input"].sum == 1200 and by_type["output"].sum == 300
    assert list(by_type["input"].explicit_bounds) == TOKEN_BUCKETS
    assert attributes(by_type["input"].attributes)["gen_ai.provider.name"] == "openai"
    assert receiver.metric("gen_ai.client.token.usage").unit == "{token}"
    [duration] = receiver.metric_points("gen_ai.client.operation.duration")
    assert list(duration.explicit_bounds) == pytest.approx(DURATION_BUCKETS)
    assert duration.sum == pytest.approx(record_latency_ns / 1e9, rel=1e-6)
    assert receiver.metric("gen_ai.client.operation.duration").unit == "s"
    [cost] = receiver.metric_points("tokenmeter.cost")
    assert cost.as_double == pytest.approx(attrs["tokenmeter.cost.amount"])

    sent = b"".join(receiver.bodies)
    assert PROMPT.encode() not in sent and b"secret prompt" not in sent


def test_span_times_are_the_calls_own(receiver: OtlpReceiver) -> None:
    made = tokenmeter.record(
        "anthropic", "claude-sonnet-4-5", 10, 2, timestamp="2026-11-22T10:00:00.250Z"
    )
    assert tokenmeter.flush(timeout=60)
    [span] = receiver.spans()
    assert span.end_time_unix_nano == 1795341600250000000
    assert span.start_time_unix_nano == span.end_time_unix_nano  # no latency known: an instant
    assert attributes(span.attributes)["tokenmeter.record.id"] == made.id


def test_a_record_dated_beyond_what_otlp_holds_loses_no_spans(receiver: OtlpReceiver) -> None:
    """OTLP times are unsigned 64-bit nanoseconds since 1970 (up to 2554). A record dated outside
    (``record(timestamp=...)`` takes any date) made the exporter fail to encode the whole batch
    of spans it was in ("Value out of range"): the spans of every other record were lost too."""
    when = ["2026-11-22T10:00:00Z", "3000-01-01T00:00:00Z", "1900-01-01T00:00:00Z"]
    ids = {tokenmeter.record("openai", "gpt-4o", 10, 2, timestamp=ts).id for ts in when}
    assert tokenmeter.flush(timeout=60)
    spans = {attributes(s.attributes)["tokenmeter.record.id"]: s for s in receiver.spans()}
    assert set(spans) == ids
    times = [(s.start_time_unix_nano, s.end_time_unix_nano) for s in spans.values()]
    assert (1795341600000000000, 1795341600000000000) in times
    assert (2**64 - 1, 2**64 - 1) in times and (0, 0) in times  # the nearest times OTLP holds


def test_a_record_with_more_tags_than_a_span_holds_keeps_its_genai_attributes(
    receiver: OtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A span holds 128 attributes (OTEL_ATTRIBUTE_COUNT_LIMIT) and the SDK makes room by
    dropping the OLDEST: with the tags after the GenAI attributes, a record with 120 tags lost
    its operation, provider, model and token counts, and kept its tags. The first tags are
    left out before the span is made: the SDK logged a warning for each one it dropped (891
    for a record with 1,000 tags)."""
    tags = {f"k{i:03d}": "v" for i in range(150)}
    with caplog.at_level(logging.WARNING):
        made = tokenmeter.record("openai", "gpt-4o", 1200, 300, tags=tags)
        assert tokenmeter.flush(timeout=60)
    assert not [r for r in caplog.records if "Attributes dict is full" in r.getMessage()]
    [span] = receiver.spans()
    got = attributes(span.attributes)
    assert got["gen_ai.operation.name"] == "chat"
    assert got["gen_ai.provider.name"] == "openai"
    assert got["gen_ai.request.model"] == got["gen_ai.response.model"] == "gpt-4o"
    assert got["gen_ai.usage.input_tokens"] == 1200 and got["gen_ai.usage.output_tokens"] == 300
    assert got["tokenmeter.record.id"] == made.id and "tokenmeter.cost.amount" in got
    assert len(got) == 128 and got["tokenmeter.tag.k149"] == "v"
    assert "tokenmeter.tag.k000" not in got


@pytest.mark.parametrize("limit", [0, 2, 4, 6, 16])
def test_a_low_attribute_limit_keeps_the_conventions_names_and_the_whole_metrics(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """With ``OTEL_ATTRIBUTE_COUNT_LIMIT=16`` a span without tags kept tokenmeter's own
    attributes and lost the conventions' operation, provider and model (the SDK drops the
    oldest). The conventions' naming attributes go last; the span's name and the metrics are
    made of the whole set, not what the span holds (a failed call's duration kept its
    ``error.type``)."""
    from opentelemetry.sdk.trace import SpanLimits

    from tokenmeter.sinks.otel import OTelSink

    monkeypatch.setenv("OTEL_ATTRIBUTE_COUNT_LIMIT", str(limit))
    failed = build_record(
        1,
        status="error",
        error="RateLimitError",
        input_tokens=0,
        output_tokens=0,
        total_tokens=0,
        estimated_cost_usd=None,
        cost_breakdown=None,
        session_id="checkout-1",
        tags={"feature": "cart"},
    )
    sink = OTelSink()
    sink.write([build_record(0, session_id="checkout-1"), failed])
    sink.close()
    [ok_span, failed_span] = sorted(receiver.spans(), key=lambda span: span.start_time_unix_nano)
    assert ok_span.name == failed_span.name == "chat gpt-4o"
    room = SpanLimits().max_span_attributes
    kept = ["gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model"]
    for span, naming in ((ok_span, kept), (failed_span, [*kept, "error.type"])):
        got = attributes(span.attributes)
        assert len(got) == room
        assert set(naming[:room]) <= set(got)
    durations = _points_by("gen_ai.client.operation.duration", receiver, "error.type")
    assert durations[None].count == 1 and durations["RateLimitError"].count == 1
    [used] = receiver.metric_points("gen_ai.client.token.usage")[:1]
    assert attributes(used.attributes)["gen_ai.request.model"] == "gpt-4o"


def test_providers_have_the_conventions_well_known_names(receiver: OtlpReceiver) -> None:
    """xAI, Mistral, Azure OpenAI and Bedrock calls went out under tokenmeter's own names
    (``x-ai``, ``mistral``, ``azure``, ``aws``), which the conventions' well-known values
    (``x_ai``, ``mistral_ai``, ``azure.ai.openai``, ``aws.bedrock``) never match: a dashboard
    of the GenAI providers missed those calls. Aliases given to ``record()`` name them too."""
    expected = {
        "x-ai": ("x_ai", "xai"),  # the deprecated gen_ai.system spelled xAI "xai"
        "xai": ("x_ai", "xai"),
        "mistral": ("mistral_ai", "mistral_ai"),
        "azure": ("azure.ai.openai", "azure.ai.openai"),
        "bedrock": ("aws.bedrock", "aws.bedrock"),
        "gemini": ("gcp.gen_ai", "gcp.gen_ai"),
        "deepseek": ("deepseek", "deepseek"),
        "ollama": ("ollama", "ollama"),  # not a well-known one: as it is
    }
    made = {tokenmeter.record(name, "some-model", 10, 2).id: name for name in expected}
    assert tokenmeter.flush(timeout=60)
    got = {}
    for span in receiver.spans():
        attrs = attributes(span.attributes)
        name = made[attrs["tokenmeter.record.id"]]
        got[name] = (attrs["gen_ai.provider.name"], attrs["gen_ai.system"])
        assert attrs["tokenmeter.provider"] == canonical(name)  # an alias is its provider
    assert got == expected


def test_an_unpriced_call_has_no_cost_rather_than_zero(receiver: OtlpReceiver) -> None:
    tokenmeter.record("openai", "no-such-model-xyz", 10, 2)
    assert tokenmeter.flush(timeout=60)
    [span] = receiver.spans()
    assert "tokenmeter.cost.amount" not in attributes(span.attributes)
    assert receiver.metric_points("tokenmeter.cost") == []


def test_a_collector_answering_503_loses_nothing_the_exporter_retries(
    receiver: OtlpReceiver,
) -> None:
    receiver.fail_next = 2
    ids = {tokenmeter.record("openai", "gpt-4o", 10, 2).id for _ in range(5)}
    assert tokenmeter.flush(timeout=120)
    assert 503 in receiver.answered
    got = {attributes(s.attributes)["tokenmeter.record.id"] for s in receiver.spans()}
    assert got == ids


def test_flush_says_false_when_the_collector_refused_an_export_and_true_once_it_takes_them(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The exporter gives up on a batch the collector keeps refusing past its timeout, and the
    OpenTelemetry SDK drops it: flush() returned True all the same, as if it were written."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    receiver.fail_next = 1_000_000  # 503 to everything
    tokenmeter.record("openai", "gpt-4o", 10, 2)
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        assert not tokenmeter.flush(timeout=60)
    assert any("did not reach the collector" in r.getMessage() for r in caplog.records)
    receiver.fail_next = 0
    kept = tokenmeter.record("openai", "gpt-4o", 10, 2)
    assert tokenmeter.flush(timeout=60)
    got = [attributes(s.attributes)["tokenmeter.record.id"] for s in receiver.spans()]
    assert got == [kept.id]


def test_flush_says_false_when_the_sdks_queue_dropped_spans(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A collector slower than the calls: the OpenTelemetry SDK's batch processor drops the
    spans past its queue (one log line of its own), and flush() said True, as if written."""
    from tokenmeter.sinks import otel

    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "8")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8")
    receiver.hold = threading.Event()  # every export waits until the test lets it go
    before = otel._spans.ended
    for _ in range(100):
        tokenmeter.record("openai", "gpt-4o", 10, 2)
    flushing = threading.Thread(target=lambda: results.append(tokenmeter.flush(timeout=120)))
    results: list[bool] = []
    with caplog.at_level(logging.ERROR, logger="tokenmeter"):
        flushing.start()  # the writer makes the 100 spans, then waits for the exporter
        for _ in range(12_000):  # until the writer has made them (at most 2 minutes)
            if otel._spans.ended >= before + 100:
                break
            time.sleep(0.01)
        receiver.hold.set()
        flushing.join(120)
    arrived = len(receiver.spans())
    assert results == [False] and arrived < 100
    said = [r.getMessage() for r in caplog.records if "queue" in r.getMessage()]
    assert said and f"{100 - arrived} spans were dropped" in said[0]
    kept = tokenmeter.record("openai", "gpt-4o", 10, 2)
    assert tokenmeter.flush(timeout=60)  # the drops were said once
    assert attributes(receiver.spans()[-1].attributes)["tokenmeter.record.id"] == kept.id


def test_a_hung_collector_never_blocks_the_application(receiver: OtlpReceiver) -> None:
    receiver.hold = threading.Event()  # every export waits until the test lets it go
    tokenmeter.record("openai", "gpt-4o", 10, 2)
    flushing = threading.Thread(target=tokenmeter.flush)
    flushing.start()  # the sink's exporter is now stuck on the receiver
    made = [tokenmeter.record("openai", "gpt-4o", 10, 2) for _ in range(200)]
    _one_call()  # an instrumented SDK call goes through too
    assert len(made) == 200 and not receiver.hold.is_set()
    receiver.hold.set()
    flushing.join(120)
    assert tokenmeter.flush(timeout=60)
    assert len(receiver.spans()) == 202


def test_configure_again_keeps_one_exporter_and_a_reused_sink_working(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace

    from tokenmeter.sinks import OTelSink, otel

    first = tokenmeter.record("openai", "gpt-4o", 10, 2).id  # the "otel" sink, by name
    tokenmeter.configure(stream_usage=True)  # new sinks from the names; the old one is closed
    second = tokenmeter.record("openai", "gpt-4o", 10, 2).id
    monkeypatch.delenv("TOKENMETER_SINKS")
    mine = OTelSink()
    tokenmeter.configure(sinks=[mine])
    tokenmeter.configure(stream_usage=False)  # closes ``mine``, then uses it again
    tracer = trace.get_tracer_provider().get_tracer("test")  # none set: spans go nowhere
    with tracer.start_as_current_span("not recorded"):
        third = tokenmeter.record("openai", "gpt-4o", 10, 2).id
    assert tokenmeter.flush(timeout=60)
    got = {attributes(s.attributes)["tokenmeter.record.id"] for s in receiver.spans()}
    assert got == {first, second, third}
    assert len(otel._providers) == 1  # one pair of exporters for the process


@pytest.mark.parametrize("signal", ["TRACES", "METRICS"])
def test_an_exporter_set_to_none_sends_nothing(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, signal: str
) -> None:
    """``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER=none`` is the standard way to turn a
    signal off (a backend taking traces only, as Langfuse): it was ignored, so the metrics went
    to the OTLP endpoint all the same, by default localhost:4318, where nobody listens: a
    warning every minute, and every exit held up to exit_timeout by the exporter's retries."""
    monkeypatch.setenv(f"OTEL_{signal}_EXPORTER", "none")
    made = tokenmeter.record("openai", "gpt-4o", 10, 2)
    assert tokenmeter.flush(timeout=60)
    spans = [attributes(s.attributes)["tokenmeter.record.id"] for s in receiver.spans()]
    if signal == "TRACES":
        assert spans == [] and receiver.metric_points("gen_ai.client.token.usage")
    else:
        assert spans == [made.id] and receiver.metrics == []


def test_a_collector_that_is_down_fails_nothing_in_the_application(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = OtlpReceiver()
    closed.close()  # nobody listens on this port any more
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", closed.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.setenv("TOKENMETER_SINKS", "otel,jsonl")
    _one_call()
    tokenmeter.record("openai", "gpt-4o", 10, 2)
    assert not tokenmeter.flush(timeout=60)  # the spans were dropped: not written
    lines = (Path(".tokenmeter") / "usage.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the other sink got everything
    tokenmeter.configure(sinks=[])
    _shut_down_own_providers()


def test_an_otel_sink_that_cannot_be_made_leaves_the_other_sinks_writing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenTelemetry's SDK refuses some settings of its own variables when the sink builds its
    exporters (a batch larger than the queue): the ValueError took every sink named with it
    away ("could not open its sinks; nothing is written"), the local files included."""
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096")  # the queue holds 2048
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("TOKENMETER_SINKS", "otel,jsonl")
    _one_call()
    tokenmeter.record("openai", "gpt-4o", 10, 2)
    assert tokenmeter.flush(timeout=60)
    lines = (Path(".tokenmeter") / "usage.jsonl").read_text().splitlines()
    assert len(lines) == 2
    [error] = [r for r in caplog.records if r.name == "tokenmeter" and r.levelname == "ERROR"]
    assert "'otel'" in error.getMessage() and "max_export_batch_size" in error.getMessage()
    tokenmeter.configure(sinks=[])
    _shut_down_own_providers()


def _run_app(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run in a process of its own (the global providers can be set only once), which
    must succeed."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result


EXIT_WITH_RECORDS_QUEUED = """
import tokenmeter
tokenmeter.record("openai", "gpt-4o", 10, 2)
assert tokenmeter.flush(timeout=60)  # tokenmeter's own exporters are made
for _ in range(50):
    tokenmeter.record("openai", "gpt-4o", 10, 2)
"""


def test_records_queued_at_exit_reach_the_collector(receiver: OtlpReceiver) -> None:
    """The exporters tokenmeter builds were shut down by the SDK's own exit hook, which runs
    before tokenmeter's exit flush (registered later, run first): the spans and metric points
    of records still queued at exit were dropped ("Exporter already shutdown")."""
    result = _run_app(EXIT_WITH_RECORDS_QUEUED)
    assert "shutdown" not in result.stderr
    assert len(receiver.spans()) == 51
    points = _points_by("gen_ai.client.token.usage", receiver, "gen_ai.token.type")
    assert points["input"].count == 51


APP_SETS_UP_OPENTELEMETRY_AFTER_TOKENMETER = """
import tokenmeter
tokenmeter.instrument()  # first, as at the top of a program
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
provider = TracerProvider()  # the SDK's exit hook shuts it down, registered now
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
tokenmeter.configure(sinks=["otel"])
for _ in range(20):
    tokenmeter.record("openai", "gpt-4o", 10, 2)
"""


def test_records_queued_at_exit_reach_the_applications_exporter(receiver: OtlpReceiver) -> None:
    """The application set up OpenTelemetry after tokenmeter's exit hook was registered: its
    provider was shut down before tokenmeter's exit flush, and every span of the records still
    queued was dropped (here all 20)."""
    _run_app(APP_SETS_UP_OPENTELEMETRY_AFTER_TOKENMETER)
    assert len(receiver.spans()) == 20


APP_TRACES_ONLY_AFTER_THE_SINK_IS_MADE = """
import tokenmeter
from tokenmeter.sinks import OTelSink
tokenmeter.configure(sinks=[OTelSink()])  # first, as in a settings module
tokenmeter.record("openai", "gpt-4o", 10, 2)
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
provider = TracerProvider(resource=Resource.create({"service.name": "the-app"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)  # tracing only: no MeterProvider
for _ in range(20):
    tokenmeter.record("openai", "gpt-4o", 10, 2)
"""


def test_an_application_setting_up_tracing_after_the_sink_was_made_gets_its_spans(
    receiver: OtlpReceiver,
) -> None:
    """A sink made before the application set up OpenTelemetry (a configure() in a settings
    module, a first call) kept tokenmeter's own providers for good: none of its spans reached
    the application's exporter (here they reached the same collector only because both read
    the endpoint from the environment, under tokenmeter's resource). And an application that
    traces only got a metrics exporter of tokenmeter's that it never set up."""
    _run_app(APP_TRACES_ONLY_AFTER_THE_SINK_IS_MADE)
    with receiver.arrived:
        services = [
            attributes(resource_spans.resource.attributes)["service.name"]
            for request in receiver.traces
            for resource_spans in request.resource_spans
            for _ in resource_spans.scope_spans[0].spans
        ]
    assert services[-20:] == ["the-app"] * 20
    assert receiver.metrics == []


def test_a_sink_never_configured_holds_none_of_the_applications_spans() -> None:
    """A sink watches the records submitted on the application's threads from the moment it is
    made, to find the span each call was made in. One made for a configure() call that was
    refused (or made and dropped) was kept by that watch for ever, and so were the contexts of
    every record made in a span, spans and all, up to 100,000 of them (20,000 requests with a
    2 kB attribute each held 75 MB)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tokenmeter.sinks import OTelSink

    tracer_provider = TracerProvider()
    exported = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exported))
    providers = {
        "tracer_provider": tracer_provider,
        "meter_provider": MeterProvider(metric_readers=[InMemoryMetricReader()]),
    }
    refused = OTelSink(**providers)
    with pytest.raises(ValueError, match="max_queue"):
        tokenmeter.configure(sinks=[refused], max_queue=0)
    forgotten = weakref.ref(refused)
    del refused
    gc.collect()
    assert forgotten() is None

    tokenmeter.configure(sinks=[OTelSink(**providers)])  # one in use still finds the span
    tracer = tracer_provider.get_tracer("the-app")
    with tracer.start_as_current_span("handle-request") as request:
        made = tokenmeter.record("openai", "gpt-4o", 10, 2)
    assert tokenmeter.flush(timeout=60)
    [call] = [s for s in exported.get_finished_spans() if s.name == "chat gpt-4o"]
    assert call.attributes is not None and call.attributes["tokenmeter.record.id"] == made.id
    assert call.parent is not None
    assert call.parent.span_id == request.get_span_context().span_id


def test_a_sink_dropped_unconfigured_leaves_the_calls_records_made_later() -> None:
    """A dropped sink's watch stayed after the sink was collected: from then on, for the life of
    the process, no call's record was made later by a writer (3 calls of 4 wait for one here),
    every one was made on the application's thread."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    from tokenmeter import _pipeline
    from tokenmeter.sinks import InMemorySink, OTelSink

    refused = OTelSink(
        tracer_provider=TracerProvider(),
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
    )
    with pytest.raises(ValueError, match="max_queue"):
        tokenmeter.configure(sinks=[refused], max_queue=0)
    del refused
    gc.collect()

    memory = InMemorySink()
    tokenmeter.configure(sinks=[memory])
    _pipeline.set_sinks(lambda: [memory], flush_interval=600.0)  # the writer waits: calls wait
    tokenmeter.instrument(["openai"])
    with FakeProvider() as fake, tokenmeter.session("chat"):
        client = fake.openai_client()
        for _ in range(4):  # the first of a model is made at once
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": PROMPT}]
            )
        assert len(_pipeline._later) // 2 == 3
    assert tokenmeter.flush(timeout=60)
    assert len(memory.records) == 4


def test_a_provider_that_is_no_provider_is_a_value_error_naming_the_argument() -> None:
    """The two swapped, an exporter's name or any other object raised AttributeError from
    inside the sink ('MeterProvider' object has no attribute 'get_tracer')."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    from tokenmeter.sinks import OTelSink

    tracer_provider, meter_provider = TracerProvider(), MeterProvider()
    for kwargs, message in [
        ({"tracer_provider": meter_provider}, "tracer_provider .* got MeterProvider$"),
        ({"meter_provider": tracer_provider}, "meter_provider .* got TracerProvider$"),
        ({"tracer_provider": "otlp"}, "tracer_provider .* got str$"),
        ({"meter_provider": object()}, "meter_provider .* got object$"),
    ]:
        with pytest.raises(ValueError, match=message) as excinfo:
            OTelSink(**kwargs)
        one_line_value_error(excinfo)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def test_a_stream_read_after_its_span_ended_is_still_that_spans_child() -> None:
    """A stream's record is made when it ends, and its span's parent was the span active
    then: a stream made inside the application's span and read after it ended (returned by a
    traced function, handed to a web framework's streaming response) was exported outside the
    request's trace. Its parent is the span it was made in, as its session is."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from tokenmeter.sinks import OTelSink

    tracer_provider = TracerProvider()
    exported = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exported))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    tokenmeter.configure(
        sinks=[OTelSink(tracer_provider=tracer_provider, meter_provider=meter_provider)]
    )
    tokenmeter.instrument()
    tracer = tracer_provider.get_tracer("the-app")
    with FakeProvider() as fake:
        client = fake.openai_client()
        with tracer.start_as_current_span("generate") as generate:
            stream = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], stream=True
            )
        with tracer.start_as_current_span("send-response"):
            chunks = list(stream)
    assert chunks
    assert tokenmeter.flush(timeout=60)
    [call] = [s for s in exported.get_finished_spans() if s.name.startswith("chat ")]
    assert call.parent is not None
    assert call.parent.span_id == generate.get_span_context().span_id


def test_inside_an_application_that_set_up_opentelemetry() -> None:
    """Its providers are reused and a metered call is a child of the span it was made in."""
    result = subprocess.run(
        [sys.executable, str(HERE / "otel_app_process.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.splitlines()[-1])
    app, metered = found["app_span"], found["metered_span"]
    assert metered["trace_id"] == app["trace_id"]
    assert metered["parent_id"] == app["span_id"]
    assert found["orphan_parent"] is None  # a call outside any span starts its own trace
    assert found["resource_service"] == "the-app"  # the application's resource, not ours
    assert {"gen_ai.client.operation.duration", "gen_ai.client.token.usage"} <= set(
        found["metric_names"]
    )
    assert found["exported_to_network"] is False


def _points_by(name: str, receiver: OtlpReceiver, key: str) -> dict[Any, Any]:
    return {attributes(p.attributes).get(key): p for p in receiver.metric_points(name)}


def test_the_latest_genai_conventions_when_opted_in(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` (in a comma-separated list)
    emits the latest names instead of the v1.41 ones, never both."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "http, gen_ai_latest_experimental")
    from tokenmeter.sinks import OTelSink

    mixed = {"input_text": 1000, "input_image": 200, "output_text": 300, "cache_read_text": 500}
    chat = {
        "modalities": mixed,
        "cache_read_tokens": 500,
        "cache_write_tokens": 40,
        "reasoning_tokens": 0,
        "tags": {},
    }
    records = [
        build_record(0, **chat),
        build_record(1, **chat),
        build_record(
            2,
            status="error",
            error="RateLimitError",
            input_tokens=0,
            output_tokens=0,
            total_tokens=0,
            estimated_cost_usd=None,
            cost_breakdown=None,
        ),
        build_record(
            3,
            operation="embeddings",
            model_name="text-embedding-3-small",
            input_tokens=50,
            output_tokens=0,
            total_tokens=50,
            latency_ms=20.0,
        ),
    ]
    sink = OTelSink()
    sink.write(records)
    sink.close()

    spans = {attributes(s.attributes)["tokenmeter.record.id"]: s for s in receiver.spans()}
    first = attributes(spans["rec-000000"].attributes)
    assert "gen_ai.system" not in first and "gen_ai.usage.cache_creation.input_tokens" not in first
    assert first["gen_ai.provider.name"] == "openai"
    assert first["gen_ai.usage.cache_write.input_tokens"] == 40
    assert first["gen_ai.usage.text.input_tokens"] == 1000
    assert first["gen_ai.usage.image.input_tokens"] == 200
    assert first["gen_ai.usage.text.output_tokens"] == 300
    assert first["gen_ai.usage.text.cache_read.input_tokens"] == 500
    assert attributes(spans["rec-000002"].attributes)["error.type"] == "RateLimitError"
    assert spans["rec-000003"].name == "embeddings text-embedding-3-small"

    names = {
        metric.name
        for request in receiver.metrics
        for resource_metrics in request.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    }
    assert not names & {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"}

    # Usage counters: every inference call (the failed one adds 0 under "unknown"), summed, by
    # the modality the provider reported; none for embeddings, which have their own histogram.
    prefix = "gen_ai.client.inference.usage"
    modality = "gen_ai.token.modality"
    used_in = _points_by(f"{prefix}.input_tokens", receiver, modality)
    assert {k: p.as_int for k, p in used_in.items()} == {"text": 2000, "image": 400, "unknown": 0}
    assert receiver.metric(f"{prefix}.input_tokens").sum.is_monotonic
    assert receiver.metric(f"{prefix}.input_tokens").unit == "{token}"
    used_out = _points_by(f"{prefix}.output_tokens", receiver, modality)
    assert {k: p.as_int for k, p in used_out.items()} == {"text": 600, "unknown": 0}
    cached = _points_by(f"{prefix}.cache_read.input_tokens", receiver, modality)
    assert {k: p.as_int for k, p in cached.items()} == {"text": 1000}
    written = _points_by(f"{prefix}.cache_write.input_tokens", receiver, modality)
    assert {k: p.as_int for k, p in written.items()} == {"unknown": 80}
    assert receiver.metric(f"{prefix}.reasoning.output_tokens") is None  # none was used
    for point in receiver.metric_points(f"{prefix}.input_tokens"):
        assert attributes(point.attributes)["gen_ai.operation.name"] == "chat"
        assert "error.type" not in attributes(point.attributes)

    # Per-operation histograms: successful calls only, no modality.
    [per_call] = receiver.metric_points("gen_ai.client.inference.operation.input_tokens")
    assert (per_call.count, per_call.sum) == (2, 2400)
    assert list(per_call.explicit_bounds) == TOKEN_BUCKETS
    assert modality not in attributes(per_call.attributes)
    [per_call_out] = receiver.metric_points("gen_ai.client.inference.operation.output_tokens")
    assert (per_call_out.count, per_call_out.sum) == (2, 600)
    durations = _points_by("gen_ai.client.inference.duration", receiver, "error.type")
    assert durations[None].count == 2 and durations["RateLimitError"].count == 1
    assert list(durations[None].explicit_bounds) == pytest.approx(DURATION_BUCKETS)
    assert receiver.metric("gen_ai.client.inference.duration").unit == "s"

    [embedded] = receiver.metric_points("gen_ai.client.embeddings.operation.input_tokens")
    assert (embedded.count, embedded.sum) == (1, 50)
    [embed_time] = receiver.metric_points("gen_ai.client.embeddings.duration")
    assert embed_time.sum == pytest.approx(0.02)

    costs = _points_by("tokenmeter.cost", receiver, "gen_ai.operation.name")
    assert costs["chat"].as_double == pytest.approx(float(2 * records[0].estimated_cost_usd))
    assert costs["embeddings"].as_double == pytest.approx(float(records[3].estimated_cost_usd))


#: The end of the fork scripts: the parent lets its thread go, then waits up to 30 s for the
#: child, which prints one JSON line (a child that hangs is killed and said to be "hung").
_REAP_THE_CHILD = """
release.set()
for _ in range(600):
    if os.waitpid(pid, os.WNOHANG)[0]:
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print(json.dumps({"hung": True}), flush=True)
"""

FORK_WITH_THE_APPLICATIONS_SINK = (
    """
import json, os, threading, time
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import tokenmeter
from tokenmeter.sinks import OTelSink

spans = InMemorySpanExporter()
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
sink = OTelSink(tracer_provider=tracer_provider, meter_provider=meter_provider)
tokenmeter.configure(sinks=[sink])
tracer = tracer_provider.get_tracer("the-app")
with tracer.start_as_current_span("parent-request"):
    tokenmeter.record("openai", "gpt-4o", 10, 2)
assert tokenmeter.flush(timeout=60)
held, release = threading.Event(), threading.Event()

def hold_the_lock():  # as the writer does for an instant per record
    with sink._parents_lock:
        held.set()
        release.wait()

threading.Thread(target=hold_the_lock, daemon=True).start()
held.wait()
spans.clear()
pid = os.fork()
if pid == 0:
    with tracer.start_as_current_span("child-request") as request:
        made = tokenmeter.record("openai", "gpt-4o", 10, 2)
    flushed = tokenmeter.flush(timeout=20)
    [call] = [s for s in spans.get_finished_spans() if s.name == "chat gpt-4o"] or [None]
    parent = None if call is None or call.parent is None else call.parent.span_id
    print(json.dumps({
        "flushed": flushed,
        "exported": call is not None,
        "is_child": parent == request.get_span_context().span_id,
    }), flush=True)
    os._exit(0)
"""
    + _REAP_THE_CHILD
)


def test_a_forked_child_exports_its_calls_inside_its_own_spans() -> None:
    """An OTelSink given to configure() is used again by a forked child (a worker of a pool,
    a server's preforked worker). Its watch of the records submitted was gone there (the
    pipeline forgets the parent's at fork), so the child's calls were never children of the
    spans they were made in; and a lock another thread of the parent held at the fork was held
    for ever in the child, whose records then never reached the exporter."""
    result = _run_app(FORK_WITH_THE_APPLICATIONS_SINK)
    found = json.loads(result.stdout.splitlines()[-1])
    assert found == {"flushed": True, "exported": True, "is_child": True}


FORK_WHILE_A_THREAD_BUILDS_THE_EXPORTERS = (
    """
import json, os, threading, time
os.environ["TOKENMETER_SINKS"] = "otel"
import tokenmeter
from tokenmeter.sinks import otel

held, release = threading.Event(), threading.Event()

def build():  # a thread making the first sink holds the lock while it builds the exporters
    with otel._providers_lock:
        held.set()
        release.wait()

threading.Thread(target=build, daemon=True).start()
held.wait()
pid = os.fork()
if pid == 0:
    tokenmeter.record("openai", "gpt-4o", 10, 2)  # makes the child's sinks
    print(json.dumps({"flushed": tokenmeter.flush(timeout=30)}), flush=True)
    os._exit(0)
"""
    + _REAP_THE_CHILD
)


def test_a_child_forked_while_a_thread_builds_the_exporters_records(
    receiver: OtlpReceiver,
) -> None:
    """The lock guarding tokenmeter's own providers, held by another thread of the parent at
    the fork (making its first OTel sink), was held for ever in the child: its first record,
    on the application's thread, never returned."""
    result = _run_app(FORK_WHILE_A_THREAD_BUILDS_THE_EXPORTERS)
    assert json.loads(result.stdout.splitlines()[-1]) == {"flushed": True}
    assert len(receiver.spans()) == 1


FORK_DURING_A_METRICS_EXPORT = (
    """
import json, os, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
parked, release, arm = threading.Event(), threading.Event(), threading.Event()

class Collector(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/metrics" and arm.is_set() and not parked.is_set():
            parked.set()  # the parent's metric reader holds its export lock until answered
            release.wait(60)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{server.server_address[1]}"
os.environ["OTEL_METRIC_EXPORT_INTERVAL"] = "100"
os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "600000"  # a span stays queued until a flush
import tokenmeter
from tokenmeter.sinks import OTelSink, otel

tokenmeter.configure(sinks=[OTelSink()])  # the application's sink object, used by its workers
tokenmeter.record("openai", "gpt-4o", 1000, 100)
assert tokenmeter.flush(timeout=60)
tokenmeter.record("openai", "gpt-4o", 1000, 100)  # its span queued in the parent at the fork
while otel._spans.ended < 2:
    time.sleep(0.01)
arm.set()
assert parked.wait(60), "the parent's periodic metrics export never came"
pid = os.fork()
if pid == 0:
    tokenmeter.record("openai", "gpt-4o", 1000, 100)
    print(json.dumps({"flushed": tokenmeter.flush(timeout=20)}), flush=True)
    os._exit(0)
"""
    + _REAP_THE_CHILD
)


def test_a_child_forked_during_a_metrics_export_flushes_its_given_sink() -> None:
    """A worker forked while the parent's metric reader was exporting (it holds its export lock
    for the whole POST) had the OTelSink given to configure() wedged for life: its flush also
    flushed the copies of the parent's providers, whose lock no thread of the child would ever
    let go. flush(timeout=10) said False after 10 s, flush() hung, and the child's exit waited
    its exit_timeout. And the span the parent still had queued at the fork, never exported from
    the child, was reported there as dropped by the SDK's queue: flush() said False."""
    result = _run_app(FORK_DURING_A_METRICS_EXPORT)
    assert json.loads(result.stdout.splitlines()[-1]) == {"flushed": True}


def test_attributes_say_only_what_a_call_has() -> None:
    """Embeddings exported an output count of 0 (and a 0 output point, dragging averages down);
    a call a budget refused had its budget's name in error.type (one value per unnamed session:
    the conventions want few); a call refused, or failed with nothing back, claimed a response
    model."""
    from tokenmeter.sinks.otel import span_attributes

    embeddings = span_attributes(
        build_record(0, operation="embeddings", output_tokens=0, total_tokens=1200)
    )
    assert embeddings["gen_ai.operation.name"] == "embeddings"
    assert "gen_ai.usage.output_tokens" not in embeddings
    nothing = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
    blocked = span_attributes(
        build_record(
            1, status="blocked", error="BudgetExceeded: session:ab12", estimated=True, **nothing
        )
    )
    assert blocked["error.type"] == "BudgetExceeded"
    assert blocked["tokenmeter.budget.name"] == "session:ab12"
    assert "gen_ai.response.model" not in blocked
    failed = span_attributes(build_record(2, status="error", error="APITimeoutError", **nothing))
    assert failed["error.type"] == "APITimeoutError" and "gen_ai.response.model" not in failed
    assert span_attributes(build_record(3))["gen_ai.response.model"] == "gpt-4o"


def test_the_otlp_protocol_variables_choose_the_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL was ignored: with grpc, a gRPC collector got nothing and
    the logs said only BadStatusLine."""
    import importlib.util

    from tokenmeter.sinks.otel import _exporter_class

    def exporter() -> Any:
        return _exporter_class("TRACES", "trace_exporter", "OTLPSpanExporter")

    assert exporter().__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match=r"^OTEL_EXPORTER_OTLP_PROTOCOL='http/json': "):
        exporter()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")  # wins
    assert exporter().__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is None:
        with pytest.raises(ImportError, match="pip install opentelemetry-exporter-otlp-proto-grpc"):
            exporter()
    else:
        assert exporter().__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")


FORK_A_POOL_AFTER_CALLS = """
import os, sys, time
import tokenmeter
from tokenmeter.sinks import OTelSink
if sys.argv[1] == "given":
    tokenmeter.configure(sinks=[OTelSink()])  # a sink of the application's, used by the workers
for _ in range(5):  # a warm-up before the pool starts
    tokenmeter.record("openai", "gpt-4o", 1000, 100)
assert tokenmeter.flush(timeout=60)
workers = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        tokenmeter.record("openai", "gpt-4o", 1000, 100)
        assert tokenmeter.flush(timeout=60)
        time.sleep(0.5)  # a worker lives on: periodic exports go out meanwhile
        os._exit(0)
    workers.append(pid)
for pid in workers:
    os.waitpid(pid, 0)
"""


def _values_by_instance(receiver: OtlpReceiver, name: str, value: str) -> dict[str, set[Any]]:
    """Every ``value`` of metric ``name`` (its input points for the token histogram) exported by
    each ``service.instance.id`` (a process): a backend keeps the latest of each series, and
    sums over the instances."""
    found: dict[str, set[Any]] = {}
    with receiver.arrived:
        for request in receiver.metrics:
            for resource_metrics in request.resource_metrics:
                instance = attributes(resource_metrics.resource.attributes)["service.instance.id"]
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        if metric.name != name:
                            continue
                        for point in getattr(metric, metric.WhichOneof("data")).data_points:
                            kind = attributes(point.attributes).get("gen_ai.token.type")
                            if kind in (None, "input"):
                                found.setdefault(instance, set()).add(getattr(point, value))
    return found


@pytest.mark.parametrize("sink", ["named", "given"])
def test_forked_workers_export_only_their_own_calls_in_their_metrics(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, sink: str
) -> None:
    """A worker forked after the parent made calls exported the parent's cumulative token and
    cost totals as its own (the providers tokenmeter built were kept across the fork), under
    the worker's own ``service.instance.id``: summed over the instances, 5 calls and 2 workers
    of 1 call each made 17 calls and $0.0595 instead of 7 and $0.0245."""
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
    result = subprocess.run(
        [sys.executable, "-c", FORK_A_POOL_AFTER_CALLS, sink],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(receiver.spans()) == 7
    # Each instance's totals only grow (the parent's may be exported midway through its 5).
    calls = _values_by_instance(receiver, "gen_ai.client.token.usage", "count")
    assert sorted(max(values) for values in calls.values()) == [1, 1, 5]
    costs = _values_by_instance(receiver, "tokenmeter.cost", "as_double")
    assert sum(max(values) for values in costs.values()) == pytest.approx(7 * 0.0035)


APP_SETS_UP_METRICS_AFTER_CALLS = """
import sys
import tokenmeter
for _ in range(5):  # calls made before the application's telemetry setup ran
    tokenmeter.record("openai", "gpt-4o", 1000, 100)
assert tokenmeter.flush(timeout=60)
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
tracer_provider = TracerProvider(resource=Resource.create())
tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(tracer_provider)
reader = PeriodicExportingMetricReader(OTLPMetricExporter())
metrics.set_meter_provider(MeterProvider(resource=Resource.create(), metric_readers=[reader]))
tokenmeter.record("openai", "gpt-4o", 1000, 100)  # through the application's providers
assert tokenmeter.flush(timeout=60)
print("flushed", flush=True)
sys.stdin.read()  # until the test has seen the application's exports
"""


def _costs_since(receiver: OtlpReceiver, seen: int) -> list[float]:
    """The ``tokenmeter.cost`` values exported after the first ``seen`` metric exports, in order
    (one series here: the same resource, scope and attributes)."""
    with receiver.arrived:
        return [
            round(point.as_double, 6)
            for request in receiver.metrics[seen:]
            for resource_metrics in request.resource_metrics
            for scope_metrics in resource_metrics.scope_metrics
            for metric in scope_metrics.metrics
            if metric.name == "tokenmeter.cost"
            for point in metric.sum.data_points
        ]


def test_providers_left_for_the_applications_stop_exporting_after_their_last_flush(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink that moved to the application's providers (set up after its first calls, as
    team.md describes) left tokenmeter's own MeterProvider exporting its old totals every
    interval, in the same series as the application's (same resource, scope and attributes):
    the cost went 0.0175, 0.0035, 0.0175... for a true 0.021, a counter reset at every export."""
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
    app = subprocess.Popen(
        [sys.executable, "-c", APP_SETS_UP_METRICS_AFTER_CALLS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert app.stdout is not None and app.stdout.readline() == "flushed\n"
        seen = len(receiver.metrics)
        wait_for(
            lambda: _costs_since(receiver, seen).count(0.0035) >= 4,
            "the application's provider exporting the cost 4 times",
        )
    finally:
        _, errors = app.communicate(timeout=60)
    assert app.returncode == 0, errors
    # tokenmeter's provider sent its 5 calls before (one export may have been under way).
    assert _costs_since(receiver, seen).count(0.0175) <= 1


def test_providers_replaced_by_a_new_otel_configuration_stop_exporting(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``OTEL_*`` variable set after a first record (a collector's key loaded from a secret
    store), then ``configure()``: the new sink built a second pair of providers, and the first
    one went on exporting its totals every interval in the same series (the resource, with its
    ``service.instance.id``, is the process's): 0.0175, 0.0035, 0.0175... for a true 0.021."""
    from tokenmeter.sinks import otel

    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
    for _ in range(5):
        tokenmeter.record("openai", "gpt-4o", 1000, 100)
    assert tokenmeter.flush(timeout=60)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer from-vault")
    tokenmeter.configure(sinks=["otel"])
    tokenmeter.record("openai", "gpt-4o", 1000, 100)
    assert tokenmeter.flush(timeout=60)
    seen = len(receiver.metrics)
    wait_for(
        lambda: _costs_since(receiver, seen).count(0.0035) >= 4,
        "the new provider exporting the cost 4 times",
    )
    # The first pair sent its 5 calls before (one export may have been under way).
    assert _costs_since(receiver, seen).count(0.0175) <= 1
    assert len(otel._providers) == 1


def test_providers_replaced_while_the_collector_refused_their_last_flush_stop_exporting(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, with the application keeping its first sink object (made in a settings
    module) and the collector refusing at the moment of the ``configure()``: the replaced
    sink's close() raised from its flush before it let its providers go, and the old pair
    exported its stale total beside the new one for the life of the process."""
    from tokenmeter.sinks.otel import OTelSink

    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "100")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    first = OTelSink()
    tokenmeter.configure(sinks=[first])
    for _ in range(5):
        tokenmeter.record("openai", "gpt-4o", 1000, 100)
    assert tokenmeter.flush(timeout=60)
    receiver.fail_next = 1_000_000  # a collector restarting
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer from-vault")
    tokenmeter.configure(sinks=[OTelSink()])
    receiver.fail_next = 0
    tokenmeter.record("openai", "gpt-4o", 1000, 100)
    tokenmeter.flush(timeout=60)  # False: it says the refused export
    seen = len(receiver.metrics)
    wait_for(
        lambda: _costs_since(receiver, seen).count(0.0035) >= 4,
        "the new provider exporting the cost 4 times",
    )
    assert _costs_since(receiver, seen).count(0.0175) <= 1
    assert first._released
