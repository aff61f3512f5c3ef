"""Helpers shared by tests across folders (import as ``from helpers import ...``: pytest puts
``tests/`` on the path when it loads ``tests/conftest.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import wave
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from pg_server import PgServer

from tokenmeter import UsageRecord
from tokenmeter.sinks import InMemorySink
from tokenmeter.testing import FakeProvider

#: The ``price_source`` of a price from genai-prices' table: the installed version, which
#: pyproject lets be any 0.2.x from 0.2.3 (tests that said "genai-prices 0.2.3" failed on 0.2.5).
GENAI_PRICES_SOURCE = f"genai-prices {version('genai-prices')}"

#: A process holding part of a budget until told to exit (see its docstring).
BUDGET_HOLDER = Path(__file__).resolve().parent / "guardrails" / "budget_holder.py"


def png(width: int, height: int) -> bytes:
    """A PNG's signature and header (all an estimate reads of it) for an image of that size."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def wav(seconds: int, rate: int = 8000) -> bytes:
    """A silent mono 8-bit WAV clip of ``seconds`` (``rate`` bytes a second)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(1)
        clip.setframerate(rate)
        clip.writeframes(b"\x80" * rate * seconds)
    return out.getvalue()


def one_line_value_error(excinfo: pytest.ExceptionInfo[ValueError]) -> str:
    """A plain ValueError on one line: not pydantic's multi-line ValidationError (a subclass)."""
    assert excinfo.type is ValueError
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def unusable_paths(tmp_path: Path, wanted: str) -> dict[str, str]:
    """Paths where a sink can keep no file (``wanted="file"``) or directory (``"directory"``),
    by what is there: the other kind, a device, a FIFO, a path under a regular file, a loop of
    symbolic links, and nothing at all (``""``)."""
    other = tmp_path / f"not_a_{wanted}"
    if wanted == "file":
        other.mkdir()
    else:
        other.write_text("")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "notes.txt").write_text("")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    return {
        "a directory" if wanted == "file" else "a regular file": str(other),
        "a device": "/dev/null",
        "a FIFO": str(fifo),
        "a path under a file": str(tmp_path / "notes.txt" / "usage"),
        "a loop of symbolic links": str(loop),
        "empty": "",
    }


def check_lease_protocol(ledger: object) -> None:
    """What every budget ledger's ``lease_many`` must do (docs/budgets-and-alerts.md), on one
    that has never seen the keys "k" and "o" for the period DAY."""
    from pytest import approx

    day = "2026-12-01T00:00:00+00:00"
    lease = ledger.lease_many  # type: ignore[attr-defined]
    spent = ledger.spent  # type: ignore[attr-defined]
    # A first holder: the call (1.0) and a slice of 11 calls of 0.1 (at most 1/8 of the room).
    assert lease([("k", day, 10.0, 0.0, 0.0, 0.0, 1.0, 0.1)]) == [(True, approx(2.1), 0.0, 0.0)]
    # A second: calls of 1.0 leave room for fewer than 8 more: no slice, only the call.
    assert lease([("k", day, 10.0, 0.0, 0.0, 0.0, 1.0, 1.0)]) == [(True, 1.0, 0.0, approx(2.1))]
    assert spent("k", day) == approx(3.1)
    # The first settles 1.5 spent and gives the rest back.
    assert lease([("k", day, 10.0, 2.1, 1.5, 0.0, -1.0, 0.1)]) == [(True, 0.0, 1.5, approx(1.0))]
    assert spent("k", day) == approx(2.5)
    # The second, its call still in flight (keep 1.0), asks for 8 more: refused, nothing moves.
    assert lease([("k", day, 10.0, 1.0, 0.0, 1.0, 8.0, 1.0)]) == [(False, 1.0, 1.5, approx(0.0))]
    assert spent("k", day) == approx(2.5)
    # Several budgets: one refuses, none admits the call.
    both = [("k", day, 10.0, 0.0, 0.0, 0.0, 1.0, 0.0), ("o", day, 0.5, 0.0, 0.0, 0.0, 1.0, 0.0)]
    assert [ok for ok, *_ in lease(both)][1] is False
    assert (spent("k", day), spent("o", day)) == (approx(2.5), 0.0)
    # A call over its slice is settled at once: used more than held.
    assert lease([("k", day, 10.0, 1.0, 3.0, 0.0, -1.0, 1.0)]) == [(True, 0.0, 4.5, 0.0)]
    assert spent("k", day) == approx(4.5)


def run_python(
    *args: str, env: Mapping[str, str], cwd: Path, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    """This interpreter (or ``python``) running ``args`` (a script and its arguments, or
    ``-c CODE``) in a child process; it must exit 0 (its stderr is the failure message)."""
    done = subprocess.run(
        [python, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done


def fake_environ(fake: FakeProvider) -> dict[str, str]:
    """This environment, with the SDKs of a child process pointed at ``fake``."""
    return {**os.environ, **fake.environ(), "PYTHONPATH": os.pathsep.join(sys.path)}


def hold_budget(
    fake: FakeProvider, directory: Path, limit: str, calls: int, mode: str, *dsn: str
) -> subprocess.Popen[str]:
    """``BUDGET_HOLDER`` started, once it made its ``calls`` (``mode``, and a PostgreSQL
    ``dsn`` whose sink and ledger it uses instead of SQLite's: see its docstring)."""
    holder = subprocess.Popen(
        [sys.executable, str(BUDGET_HOLDER), str(directory), limit, str(calls), mode, *dsn],
        env=fake_environ(fake),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == f"made {calls}"
    return holder


def refuse_threads(monkeypatch: pytest.MonkeyPatch, prefix: str, times: int | None = None) -> None:
    """Starting a thread whose name starts with ``prefix`` fails ``times`` times (for ever:
    None), as when a container's pids limit or an address-space limit is reached. Call it after
    ``configure()``: the sessions' thread propagation puts its own ``Thread.start`` in place, which
    calls the one found at import."""
    start = threading.Thread.start
    left = [times]

    def start_or_refuse(thread: threading.Thread) -> None:
        if thread.name.startswith(prefix) and left[0] != 0:
            if left[0] is not None:
                left[0] -= 1
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_or_refuse)


def wait_for(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll until ``condition()`` holds; ``limit`` only turns a hang into a failure."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


async def sleeping(task: asyncio.Task[Any], what: str, limit: float = 30.0) -> None:
    """Return once ``task`` is suspended in a sleep (an SDK waiting before it retries), followed
    down the coroutines it awaits; ``limit`` only turns a hang into a failure."""
    deadline = time.monotonic() + limit
    while _awaited(task)[-1:] != ["sleep"]:
        if task.done() or time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0)


def _awaited(task: asyncio.Task[Any]) -> list[str]:
    """The names of the coroutines ``task`` is suspended in, outermost first."""
    names: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        code = getattr(awaited, "cr_code", None) or getattr(awaited, "gi_code", None)
        if code is None:  # a future: what the innermost coroutine waits on
            break
        names.append(code.co_name)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return names


def returns(work: Callable[[], Any], hang: str, limit: float = 60.0) -> list[Exception]:
    """Run ``work`` on a daemon thread: the exceptions it raised, once it returned. ``limit``
    only turns a hang (``hang`` says which) into a failure; the thread is left behind then."""
    raised: list[Exception] = []

    def run() -> None:
        try:
            work()
        except Exception as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), hang
    return raised


@contextlib.contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by another thread for the block (a writer inside its work), let go after."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(10)
    try:
        yield
    finally:
        done.set()
        holder.join()


class Held:
    """A sink that can be held, like a user sink posting to a dead host (mixed in before the
    sink's class): ``hold()`` blocks until ``release`` is set."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.release = threading.Event()
        self.entered = threading.Event()

    def hold(self) -> None:
        self.entered.set()
        self.release.wait()


class HungSink(Held, InMemorySink):
    """The in-memory sink, held in ``write``."""

    def write(self, records: Sequence[UsageRecord]) -> None:
        self.hold()
        super().write(records)


class SilencingProxy:
    """A loopback TCP relay to ``(host, port)`` standing for the network between a client and
    its server. ``silence()``: the connections made so far stay open and relay nothing more (a
    failover behind a proxy that keeps the socket open, a flow a firewall dropped), while new
    ones are relayed at once, or, with ``new_too=True``, accepted and never answered (a frozen
    server, a black-holed address). ``close()`` ends it all."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._silenced: set[socket.socket] = set()  # the client sockets held silent
        self._live: list[socket.socket] = []
        self._new_too = False
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def silence(self, new_too: bool = False) -> None:
        with self._lock:
            self._silenced.update(self._live)
            self._new_too = new_too

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._live:  # shut down first: a relay blocked in recv() holds it open
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._live.append(client)
                if self._new_too:
                    self._silenced.add(client)
                    continue
            server = socket.create_connection(self._target)
            with self._lock:
                self._live.append(server)
            for source, sink in ((client, server), (server, client)):
                relay = threading.Thread(target=self._pipe, args=(source, sink, client))
                relay.daemon = True
                relay.start()

    def _pipe(self, source: socket.socket, sink: socket.socket, client: socket.socket) -> None:
        """Relay until either end closes; nothing once ``client`` is silenced (what it got is
        held, unanswered)."""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                with self._lock:
                    if client in self._silenced:
                        continue
                sink.sendall(data)


@contextlib.contextmanager
def another_runs_connection(pg_server: PgServer) -> Iterator[Any]:
    """A connection named as tokenmeter names its own (``application_name = 'tokenmeter'``),
    open in another database of the test server: what another xdist worker's test, or another
    run sharing ``TOKENMETER_TEST_PG``, holds. ``pg_stat_activity`` lists the backends of every
    database on the server, so a test that kills or counts tokenmeter's connections must pick
    its own database's and leave this one alone. Yields the (autocommit) connection."""
    import psycopg

    dsn = pg_server.create_database()
    with psycopg.connect(dsn, application_name="tokenmeter", autocommit=True) as other:
        yield other


@contextlib.contextmanager
def ledger_rows_locked(dsn: str, keys: Sequence[str], period: str) -> Iterator[Any]:
    """An open transaction of another client (psycopg, schema ``tokenmeter``) holding the
    budget_ledger rows of ``keys`` (FOR UPDATE): what another process's ledger holds while
    it leases. Yields the connection, which can lock more rows; the transaction ends after."""
    import psycopg

    with psycopg.connect(dsn) as other:
        other.execute('SET search_path = "tokenmeter"')
        for key in keys:
            other.execute(
                "SELECT 1 FROM budget_ledger WHERE scope_key = %s AND period_start = %s FOR UPDATE",
                (key, period),
            )
        yield other


def wait_for_a_ledger_waiting_on_a_row(dsn: str) -> None:
    """Until a tokenmeter connection waits for a row lock (another client holds the row)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as admin:
        wait_for(
            lambda: bool(
                admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tokenmeter' "
                    "AND datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchone()
                == (1,)
            ),
            "the ledger waiting on the row another client holds",
        )


def fan_out(
    messages: list[dict[str, str]],
    calls: int,
    *,
    threads: bool = False,
    plan: Sequence[tuple[int, str, Mapping[str, str]]] = (),
) -> tuple[int, list[Exception]]:
    """``calls`` gpt-4o chat calls of ``messages`` made at once (``asyncio.gather``, or a thread
    each), each billed exactly its input estimate (no output), against an
    ``httpx2.MockTransport`` that answers none until every call was sent or refused: all the
    calls admitted are in flight together. Returns how many were sent, and the refusals.

    ``plan`` (asyncio only) mixes the calls instead: (how many, model, tags) in the order they
    start, each group's tasks created inside a session with those tags (tasks copy it), so that
    the calls fall in different budgets; ``calls`` must be their total."""
    import openai
    from openai import _base_client

    import tokenmeter
    from tokenmeter import BudgetExceeded
    from tokenmeter import estimate as estimate_tokens

    http = _base_client.httpx2 if hasattr(_base_client, "httpx2") else _base_client.httpx
    tokens = estimate_tokens("gpt-4o", messages=messages).input_tokens
    usage = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
    body = {"id": "c", "object": "chat.completion", "created": 1}
    answer = {**body, "choices": [], "usage": usage}
    assert not plan or (not threads and sum(count for count, _, _ in plan) == calls)
    sent: list[object] = []
    refused: list[Exception] = []
    lock = threading.Lock()
    all_settled = threading.Event()

    def tally(outcome: list[Any], item: Any) -> None:
        with lock:
            outcome.append(item)
            if len(sent) + len(refused) == calls:
                all_settled.set()

    if threads:

        def reply(request: Any) -> Any:
            tally(sent, request)
            assert all_settled.wait(60), "a call was neither sent nor refused"
            return http.Response(200, json={**answer, "model": "gpt-4o"})

        client = openai.OpenAI(
            api_key="sk-test",
            base_url="http://llm.invalid/v1",
            max_retries=0,
            http_client=http.Client(transport=http.MockTransport(reply)),
        )

        def one() -> None:
            try:
                client.chat.completions.create(model="gpt-4o", messages=messages)
            except BudgetExceeded as exc:
                tally(refused, exc)

        workers = [threading.Thread(target=one) for _ in range(calls)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return len(sent), refused

    async def main() -> None:
        settled = asyncio.Event()

        async def reply(request: Any) -> Any:
            tally(sent, request)
            if all_settled.is_set():
                settled.set()
            await asyncio.wait_for(settled.wait(), 60)
            model = json.loads(request.content)["model"]
            return http.Response(200, json={**answer, "model": model})

        client = openai.AsyncOpenAI(
            api_key="sk-test",
            base_url="http://llm.invalid/v1",
            max_retries=0,
            http_client=http.AsyncClient(transport=http.MockTransport(reply)),
        )

        async def one(model: str = "gpt-4o") -> None:
            try:
                await client.chat.completions.create(model=model, messages=messages)
            except BudgetExceeded as exc:
                tally(refused, exc)
                if all_settled.is_set():
                    settled.set()

        if not plan:
            await asyncio.gather(*(one() for _ in range(calls)))
            return
        tasks: list[asyncio.Future[None]] = []
        for index, (count, model, tags) in enumerate(plan):
            with tokenmeter.session(f"fan-out-{index}", tags=dict(tags)):
                tasks += [asyncio.ensure_future(one(model)) for _ in range(count)]
        await asyncio.gather(*tasks)

    asyncio.run(main())
    return len(sent), refused
