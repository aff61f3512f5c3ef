"""A loopback OTLP/HTTP receiver for the tests: decodes the protobuf bodies the real exporters send.

``OtlpReceiver()`` listens on 127.0.0.1 (a free port) and keeps every decoded
``ExportTraceServiceRequest`` / ``ExportMetricsServiceRequest`` and the raw bodies. ``fail_next``
answers that many requests with 503 first; ``hold`` keeps requests waiting until it is set.
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class OtlpReceiver:
    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.bodies: list[bytes] = []
        self.answered: list[int] = []
        self.fail_next = 0
        self.hold: threading.Event | None = None
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if receiver.hold is not None:
                    receiver.hold.wait(60)
                with receiver.arrived:
                    if receiver.fail_next > 0:
                        receiver.fail_next -= 1
                        status, reply = 503, b""
                    elif self.path == "/v1/traces":
                        receiver.traces.append(ExportTraceServiceRequest.FromString(body))
                        status, reply = 200, ExportTraceServiceResponse().SerializeToString()
                    elif self.path == "/v1/metrics":
                        receiver.metrics.append(ExportMetricsServiceRequest.FromString(body))
                        status, reply = 200, ExportMetricsServiceResponse().SerializeToString()
                    else:
                        status, reply = 404, b""
                    receiver.bodies.append(body)
                    receiver.answered.append(status)
                    receiver.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def spans(self) -> list[Any]:
        with self.arrived:
            return [
                span
                for request in self.traces
                for resource_spans in request.resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            ]

    def metric_points(self, name: str) -> list[Any]:
        """The data points of metric ``name`` in the latest export that has it (the SDK's
        default temporality is cumulative: each export holds the totals so far)."""
        with self.arrived:
            for request in reversed(self.metrics):
                found = [
                    point
                    for resource_metrics in request.resource_metrics
                    for scope_metrics in resource_metrics.scope_metrics
                    for metric in scope_metrics.metrics
                    if metric.name == name
                    for point in getattr(metric, metric.WhichOneof("data")).data_points
                ]
                if found:
                    return found
            return []

    def metric(self, name: str) -> Any:
        with self.arrived:
            for request in reversed(self.metrics):
                for resource_metrics in request.resource_metrics:
                    for scope_metrics in resource_metrics.scope_metrics:
                        for metric in scope_metrics.metrics:
                            if metric.name == name:
                                return metric
            return None

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


def attributes(key_values: Any) -> dict[str, Any]:
    """OTLP KeyValue list -> plain dict."""
    plain: dict[str, Any] = {}
    for kv in key_values:
        value = kv.value
        kind = value.WhichOneof("value")
        plain[kv.key] = getattr(value, kind) if kind else None
    return plain
