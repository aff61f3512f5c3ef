"""Where records go: the ``Sink`` protocol and the built-in sinks."""

from tokenmeter.sinks._base import SessionAwareSink, Sink
from tokenmeter.sinks.jsonl import JSONLSink
from tokenmeter.sinks.markdown import MarkdownJournalSink
from tokenmeter.sinks.memory import InMemorySink
from tokenmeter.sinks.sqlite import SQLiteSink

__all__ = [
    "InMemorySink",
    "JSONLSink",
    "MarkdownJournalSink",
    "SQLiteSink",
    "SessionAwareSink",
    "Sink",
]
