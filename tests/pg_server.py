"""A real PostgreSQL server for the tests, on loopback.

``.ci/run`` starts a throwaway cluster with ``.ci/pg`` and exports ``TOKENMETER_TEST_PG`` (its
DSN) and ``TOKENMETER_TEST_PGDIR`` (its directory, for the restart test). Run on their own, the
tests start such a cluster themselves when the server binaries are installed, and stop it at the
end. Only when no server can be started are the tests skipped, with the reason printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "pg"


@dataclass
class PgServer:
    dsn: str  # the maintenance database
    directory: str | None  # the cluster's directory when it can be restarted

    def restart(self) -> None:
        self.require_restart()
        assert self.directory is not None
        subprocess.run([str(PG_SCRIPT), "restart", self.directory], check=True, timeout=120)

    def require_restart(self) -> None:
        """Skip the test when the server cannot be restarted. Called on the test's own thread
        before a restart made on another: ``pytest.skip`` raised there ends that thread only,
        and the test fails instead."""
        if self.directory is None:
            pytest.skip("TOKENMETER_TEST_PGDIR is not set: cannot restart the server")

    def create_database(self) -> str:
        import psycopg

        name = f"tm_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return f"{self.dsn.replace('dbname=postgres', '')} dbname={name}".strip()


def _start_own() -> tuple[PgServer | None, str]:
    if shutil.which("su") is None or not PG_SCRIPT.exists():
        return None, "no .ci/pg script"
    directory = tempfile.mkdtemp(prefix="tokenmeter-pg-")
    os.rmdir(directory)  # .ci/pg creates it, owned by the server's user
    started = subprocess.run(
        [str(PG_SCRIPT), "start", directory], capture_output=True, text=True, timeout=180
    )
    if started.returncode:
        return None, f"could not start PostgreSQL with .ci/pg: {started.stderr.strip()[-300:]}"
    return PgServer(started.stdout.strip(), directory), ""


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    pytest.importorskip("psycopg", reason="psycopg is not installed (tokenmeter[postgres])")
    dsn = os.environ.get("TOKENMETER_TEST_PG")
    if dsn:
        yield PgServer(dsn, os.environ.get("TOKENMETER_TEST_PGDIR") or None)
        return
    server, reason = _start_own()
    if server is None:
        print(f"\nPostgreSQL tests skipped: {reason}")
        pytest.skip(reason)
    try:
        yield server
    finally:
        assert server.directory is not None
        subprocess.run([str(PG_SCRIPT), "stop", server.directory], timeout=120)
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A new, empty database on the test server."""
    return pg_server.create_database()
