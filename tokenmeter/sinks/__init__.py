"""Where records go: the ``Sink`` protocol and the built-in sinks."""

from tokenmeter.sinks._base import SessionAwareSink, Sink
from tokenmeter.sinks.jsonl import JSONLSink
from tokenmeter.sinks.markdown import MarkdownJournalSink
from tokenmeter.sinks.memory import InMemorySink
from tokenmeter.sinks.otel import OTelSink
from tokenmeter.sinks.postgres import PostgresSink
from tokenmeter.sinks.sqlite import SQLiteSink

__all__ = [
    "InMemorySink",
    "JSONLSink",
    "MarkdownJournalSink",
    "OTelSink",
    "PostgresSink",
    "SQLiteSink",
    "SessionAwareSink",
    "Sink",
]
