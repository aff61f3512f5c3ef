"""An application that set up OpenTelemetry itself, then meters calls with TOKENMETER_SINKS=otel.

Used by test_otel_sink.py (a process of its own: the global providers can be set only once).
Prints one JSON line: the application's span, tokenmeter's span made inside it, and what else
was exported.
"""

from __future__ import annotations

import json
import os
import sys

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tokenmeter
from tokenmeter.testing import FakeProvider


def main() -> None:
    resource = Resource.create({"service.name": "the-app"})
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))

    os.environ["TOKENMETER_SINKS"] = "otel"
    tokenmeter.instrument()
    tracer = trace.get_tracer("the-app")
    with FakeProvider() as fake:
        client = fake.openai_client()
        with tracer.start_as_current_span("handle-request"):
            client.chat.completions.create(model="gpt-4o", messages=[])
        tokenmeter.flush()
        client.chat.completions.create(model="gpt-4o-mini", messages=[])
    tokenmeter.flush()

    def plain(span: object) -> dict[str, object]:
        context = span.get_span_context()  # type: ignore[attr-defined]
        parent = span.parent  # type: ignore[attr-defined]
        return {
            "name": span.name,  # type: ignore[attr-defined]
            "trace_id": context.trace_id,
            "span_id": context.span_id,
            "parent_id": None if parent is None else parent.span_id,
        }

    finished = {span.name: span for span in spans.get_finished_spans()}
    data = reader.get_metrics_data()
    names = sorted(
        {
            metric.name
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        }
    )
    out = {
        "app_span": plain(finished["handle-request"]),
        "metered_span": plain(finished["chat gpt-4o"]),
        "orphan_parent": plain(finished["chat gpt-4o-mini"])["parent_id"],
        "resource_service": finished["chat gpt-4o"].resource.attributes["service.name"],
        "metric_names": names,
        "exported_to_network": any("otlp" in name for name in sys.modules),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
