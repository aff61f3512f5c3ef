"""``tokenmeter session ID`` renders a session with the markdown journal's own renderer."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from tokenmeter._models import UsageRecord
from tokenmeter.cli.reports._format import fmt_int, fmt_usd
from tokenmeter.cli.reports._model import Call
from tokenmeter.cli.reports._sessions import SessionDetail, SessionRow
from tokenmeter.sinks.markdown import render_session

__all__ = ["render_session_markdown", "render_sessions_list"]


def _record(call: Call) -> UsageRecord:
    """A call read back from a sink, as the record the journal renders."""
    return UsageRecord.model_construct(
        timestamp=datetime.fromisoformat(call.timestamp.replace("Z", "+00:00")),
        model_provider=call.provider,
        model_name=call.model,
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        total_tokens=call.total_tokens,
        estimated_cost_usd=call.cost,
        id="",
        cache_read_tokens=call.cache_read_tokens,
        cache_write_tokens=call.cache_write_tokens,
        reasoning_tokens=call.reasoning_tokens,
        cost_breakdown=call.cost_breakdown,
        session_id=call.session_id,
        session_name=call.session_name,
        tags=call.tags,
        latency_ms=call.latency_ms,
        streamed=call.streamed,
        status=call.status,
        error=call.error,
        estimated=call.estimated,
    )


def render_session_markdown(detail: SessionDetail) -> Iterator[str]:
    """The session exactly as the markdown journal writes ``sessions/<id>.md`` (one renderer),
    in pieces: its calls are read one at a time."""
    session = detail.session
    info = {
        "id": session.session_id,
        "name": session.name,
        "parent_id": None,
        "tags": session.tags,
        # JSONL keeps no session status (nor SQLite for a session whose row is missing): not
        # known, not "active" (a session that ended long ago read as running).
        "status": session.status or "unknown",
        "started_at": session.started_at or session.first_call,
        "ended_at": session.ended_at,
        "notes": session.notes,
        "budget_usd": None,
    }
    return render_session(info, map(_record, detail.calls), detail.models)


def render_sessions_list(rows: list[SessionRow]) -> list[list[str]]:
    """Cells for the ``sessions`` table: id, name, status, first and last call, totals."""
    return [
        [
            row.session_id,
            row.name or "",
            row.status or "",
            row.first_call,
            row.last_call,
            fmt_int(row.totals.calls),
            fmt_int(row.totals.total_tokens),
            fmt_usd(row.totals.cost),
            fmt_int(row.totals.unpriced_calls),
        ]
        for row in rows
    ]
