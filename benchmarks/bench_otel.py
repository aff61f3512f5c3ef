"""What the OpenTelemetry sink costs per call: on the application's thread, and on the writer's.

Prints, in one run:
- the caller's thread: CPU per ``tokenmeter.record()`` with the OTel sink configured, against the
  same with only an in-memory sink (the difference is the parent-span capture), inside and outside
  an application span;
- the writer's thread: CPU per record of ``OTelSink.write`` (span + metric points), with the
  real OTLP/HTTP exporters sending to a loopback receiver that answers 200 (the export itself
  runs on the SDK's threads and is counted in the process CPU too).

Usage: python benchmarks/bench_otel.py [--records N] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "sinks"))

from otlp_receiver import OtlpReceiver  # noqa: E402

import tokenmeter  # noqa: E402
from tokenmeter import _runtime  # noqa: E402
from tokenmeter.sinks import InMemorySink  # noqa: E402


def _record_cpu(count: int, inside_span: bool) -> float:
    """CPU microseconds per tokenmeter.record() on this thread (writer threads excluded)."""
    from opentelemetry import trace

    tracer = trace.get_tracer("bench")
    started = time.thread_time()
    if inside_span:
        with tracer.start_as_current_span("request"):
            for _ in range(count):
                tokenmeter.record("openai", "gpt-4o", 1200, 300)
    else:
        for _ in range(count):
            tokenmeter.record("openai", "gpt-4o", 1200, 300)
    return (time.thread_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    receiver = OtlpReceiver()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(args.records * 2)  # measure, do not drop
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())  # the application's (spans kept local)
    from tokenmeter.sinks.otel import OTelSink

    tokenmeter.configure(directory=str(Path(os.environ.get("TMPDIR", "/tmp")) / "tm-bench-otel"))
    results: dict[str, list[float]] = {}
    providers: list[Any] = []
    for _ in range(args.repeat):
        for name, sinks in (("memory only", [InMemorySink()]), ("otel", None)):
            if sinks is None:
                providers.append(_own_tracer())
                sinks = [InMemorySink(), OTelSink(tracer_provider=providers[-1])]
            tokenmeter.configure(sinks=sinks)
            for inside in (False, True):
                key = f"{name}, {'inside' if inside else 'outside'} an app span"
                results.setdefault(key, []).append(_record_cpu(args.records, inside))
            tokenmeter.flush()
    for key, values in results.items():
        print(f"caller    {key:38s} {min(values):6.1f} us CPU per record()")
    base_in = min(results["memory only, inside an app span"])
    with_in = min(results["otel, inside an app span"])
    print(f"          parent-span capture adds {with_in - base_in:.1f} us per call inside a span")

    providers.append(_own_tracer())
    sink = OTelSink(tracer_provider=providers[-1])
    records = [tokenmeter.record("openai", "gpt-4o", 1200, 300) for _ in range(args.records)]
    tokenmeter.configure(sinks=[])
    best = float("inf")
    for _ in range(args.repeat):
        started = time.process_time()
        for i in range(0, len(records), 256):
            sink.write(records[i : i + 256])
        providers[-1].force_flush()  # the export is part of the cost
        best = min(best, (time.process_time() - started) / len(records) * 1e6)
    sink.close()
    print(f"writer    OTelSink.write + OTLP/HTTP export   {best:6.1f} us CPU per record")
    _runtime.reset()
    for provider in providers:
        provider.shutdown()
    receiver.close()


def _own_tracer() -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


if __name__ == "__main__":
    main()
