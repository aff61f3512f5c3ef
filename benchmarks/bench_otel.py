"""What the OpenTelemetry sink costs per call: on the application's thread, and on the writer's.

Prints, in one run:
- the caller's thread: CPU per ``tokenmeter.record()`` with the OTel sink configured, against the
  same with only an in-memory sink (the difference is the parent-span capture), inside and outside
  an application span;
- the writer's thread: CPU per record of ``OTelSink.write`` (span + metric points) in the writer's
  chunks, with the default (v1.41) and the latest (``OTEL_SEMCONV_STABILITY_OPT_IN=
  gen_ai_latest_experimental``) conventions, into in-memory exporters (the sink and the SDK alone)
  and through the real OTLP/HTTP exporters to a loopback receiver that answers 200 (the export
  runs on the SDK's threads: it is in the process figure, with the final flush).

Usage: python benchmarks/bench_otel.py [--records N] [--repeat N] [--compare-with COMMIT]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "sinks"))

from otlp_receiver import OtlpReceiver  # noqa: E402

import tokenmeter  # noqa: E402
from tokenmeter import _runtime  # noqa: E402
from tokenmeter._pipeline import _CHUNK as CHUNK  # noqa: E402
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
    parser.add_argument(
        "--compare-with",
        metavar="COMMIT",
        help="also measure tokenmeter/sinks/otel.py as it was at COMMIT (git), interleaved",
    )
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

    records = [tokenmeter.record("openai", "gpt-4o", 1200, 300) for _ in range(args.records)]
    tokenmeter.configure(sinks=[])
    sinks = {"": OTelSink}
    if args.compare_with:
        sinks[f" ({args.compare_with})"] = _sink_at(args.compare_with)
    for conventions in ("v1.41", "latest"):
        for exporter in ("memory", "otlp"):
            for label, sink_class in sinks.items():  # interleaved: load hits both alike
                writer, process = _writer_cpu(
                    sink_class, records, exporter, conventions, args.repeat, providers
                )
                print(
                    f"writer    {conventions:6s} {exporter:6s} OTelSink.write{label:10s} "
                    f"{writer:6.1f} us CPU per record on the writer thread; "
                    f"{process:6.1f} us in the process (export threads)"
                )
    _runtime.reset()
    from tokenmeter.sinks import otel

    for pair in otel._providers.values():  # the pair the caller-side sinks built
        providers.extend(pair)
    for provider in providers:
        provider.shutdown()
    otel._providers.clear()
    receiver.close()


def _sink_at(commit: str) -> Any:
    """The OTelSink class of tokenmeter/sinks/otel.py at ``commit``, loaded beside today's."""
    source = subprocess.run(
        ["git", "show", f"{commit}:tokenmeter/sinks/otel.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"otel_at_{commit}")
    exec(compile(source, f"otel.py@{commit}", "exec"), module.__dict__)
    return module.OTelSink


def _writer_cpu(
    sink_class: Any,
    records: list[Any],
    exporter: str,
    conventions: str,
    repeat: int,
    providers: list[Any],
) -> tuple[float, float]:
    """Best-of-``repeat`` CPU microseconds per record: (the thread calling ``OTelSink.write`` in
    the writer's chunks, the whole process including the SDK's export threads and the flush).

    ``exporter``: "memory" keeps spans and metric points in memory (the sink and the SDK alone);
    "otlp" sends them with the real OTLP/HTTP exporters to the loopback receiver.
    """
    if conventions == "latest":
        os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"
    else:
        os.environ.pop("OTEL_SEMCONV_STABILITY_OPT_IN", None)
    best_writer = best_process = float("inf")
    for _ in range(repeat):
        tracer, meter = (
            (_memory_tracer(), _memory_meter())
            if exporter == "memory"
            else (
                _own_tracer(),
                _own_meter(),
            )
        )
        providers.extend((tracer, meter))
        sink = sink_class(tracer_provider=tracer, meter_provider=meter)
        sink.write(records[:1])  # instruments and caches made outside the measurement
        writer, process = time.thread_time(), time.process_time()
        for i in range(1, len(records), CHUNK):
            sink.write(records[i : i + CHUNK])
        writer = time.thread_time() - writer
        tracer.force_flush()  # the export is part of the process's cost
        meter.force_flush()
        process = time.process_time() - process
        sink.close()
        best_writer = min(best_writer, writer / (len(records) - 1) * 1e6)
        best_process = min(best_process, process / (len(records) - 1) * 1e6)
    os.environ.pop("OTEL_SEMCONV_STABILITY_OPT_IN", None)
    return best_writer, best_process


def _memory_tracer() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    return provider


def _memory_meter() -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    return MeterProvider(metric_readers=[InMemoryMetricReader()])


def _own_meter() -> Any:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    return MeterProvider(metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())])


def _own_tracer() -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


if __name__ == "__main__":
    main()
