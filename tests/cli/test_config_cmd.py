"""``tokenmeter config``: every effective setting and the layer it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import RunCli


def test_each_setting_names_its_source(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.tokenmeter]\n"
        'sinks = ["jsonl"]\n'
        'state-file = "notes/state.md"\n'
        "[[tool.tokenmeter.budgets]]\n"
        'name = "daily"\nlimit_usd = 25\nperiod = "day"\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_SINKS", "sqlite,markdown")  # the environment wins
    monkeypatch.setenv("TOKENMETER_THREAD_PROPAGATION", "0")
    code, out, _ = cli("config", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["sinks"] == {"value": ["sqlite", "markdown"], "source": "TOKENMETER_SINKS"}
    assert data["thread_propagation"] == {"value": False, "source": "TOKENMETER_THREAD_PROPAGATION"}
    where = f"{tmp_path / 'pyproject.toml'} [tool.tokenmeter]"
    assert data["state_file"] == {"value": str(tmp_path / "notes" / "state.md"), "source": where}
    assert data["budgets"]["source"] == where
    assert data["budgets"]["value"] == [
        {"name": "daily", "limit_usd": "25", "period": "day", "on_exceed": "raise"}
    ]
    assert data["exit_timeout"] == {"value": 10.0, "source": "default"}
    code, text, _ = cli("config")
    assert code == 0
    assert any(
        line.startswith("sinks") and line.endswith("[TOKENMETER_SINKS]")
        for line in text.splitlines()
    )


def test_a_bad_setting_is_one_line_and_exit_2(cli: RunCli, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 2, as in every command (it was 1 here and in ``alerts`` and ``prices``)."""
    monkeypatch.setenv("TOKENMETER_BUDGETS", '[{"limit_usd": 5, "period": "fortnight"}]')
    code, out, err = cli("config")
    assert code == 2 and out == ""
    assert err.startswith(
        "tokenmeter: error: tokenmeter setting 'budgets' from TOKENMETER_BUDGETS: budgets[0].period"
    )


def test_a_dsn_the_application_would_refuse_is_one_line_and_exit_2(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``?schema=`` the postgres sink refuses was shown as fine (exit 0), then the
    application's instrument() raised on it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_PG_DSN", "postgresql://app@db.internal/usage?schema=team-a")
    code, out, err = cli("config")
    assert code == 2 and out == ""
    assert err.startswith("tokenmeter: error: tokenmeter setting 'pg_dsn' from TOKENMETER_PG_DSN")


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://tm:s3cret@db.internal:5432/usage",
        "postgresql://tm@db.internal/usage?sslmode=require&password=s3cret",
        "host=db.internal user=tm password=s3cret dbname=usage",
        "host=db.internal password = 's3 cret' dbname=usage",
        # libpq takes these characters raw in a URL's password or user, and backslash escapes
        # and & in a key/value password; a query parameter's name may be percent-encoded.
        "postgresql://tm:s3#cret@db.internal/usage",
        "postgresql://tm:s3?cret@db.internal/usage",
        "postgresql://t#m:s3cret@db.internal/usage",
        "postgresql://tm@db.internal/usage?%70assword=s3cret",
        r"host=db.internal password=s3\ cret dbname=usage",
        "host=db.internal password=s3&cret dbname=usage",
        # A '/' and a ':' in the password: libpq reads port 2024 and a database "s3:cret@db..."
        "postgresql://tm:2024/s3:cret@db.internal",
    ],
)
def test_the_dsn_is_shown_without_its_password(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str
) -> None:
    """``config`` output is pasted into tickets and chats: the rest of the DSN says where the
    ledger is, the password is ``***``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_PG_DSN", dsn)
    code, out, _ = cli("config", "--format", "json")
    assert code == 0
    shown = json.loads(out)["pg_dsn"]["value"]
    assert "db.internal" in shown and "***" in shown and "s3" not in shown and "cret" not in shown
    code, text, _ = cli("config")
    assert code == 0 and "db.internal" in text and "s3" not in text


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://tm:s3/cret@db.internal/usage",
        "postgresql://tm:s3/c+r/et@db.internal:5432/usage?sslmode=require",
        "postgresql://tm:/s3cret@db.internal/usage",
        "postgresql://tm:88/s3cret@db.internal/usage",  # digits before the '/': a "port"
        "postgresql://svc/app:s3cret@db.internal/usage",  # a '/' in the user name
    ],
)
def test_a_dsn_whose_password_has_an_unencoded_slash_is_a_bad_setting(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str
) -> None:
    """A '/' ends libpq's host part: ``tm:88`` reads as host and port and the password's tail
    as the database, which config and every message named (the masks missed a password whose
    '/' came first or after digits). Refused as an '@' is, naming the setting, quoting nothing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_PG_DSN", dsn)
    code, out, err = cli("config")
    assert code == 2 and out == ""
    assert err.startswith("tokenmeter: error: tokenmeter setting 'pg_dsn' from TOKENMETER_PG_DSN")
    assert "%2F" in err and "s3" not in err and "cret" not in err


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://[::1]:5432/llm?user=alice@corp.com",
        "postgresql://db1:5432,db2:5433/llm?user=alice@corp.com",
        "postgresql://db.internal/llm?application_name=a@b",
    ],
)
def test_a_dsn_without_a_password_is_shown_whole(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str
) -> None:
    """An '@' in the query is no password's end: such DSNs were shown as
    ``postgresql://[:***@corp.com``, the host and database masked away."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_PG_DSN", dsn)
    code, out, err = cli("config", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["pg_dsn"]["value"] == dsn


def test_a_dsn_whose_password_has_an_unencoded_at_is_a_bad_setting(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``postgresql://tm:s3@cret@db.internal/usage`` can never connect (libpq tries the host
    ``cret@db.internal``, and its error quoted it into logs): like every pg_dsn the sink
    refuses, the setting is named, and nothing of the password is shown."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_PG_DSN", "postgresql://tm:s3@cret@db.internal/usage")
    code, out, err = cli("config")
    assert code == 2 and out == ""
    assert err.startswith("tokenmeter: error: tokenmeter setting 'pg_dsn' from TOKENMETER_PG_DSN")
    assert "%40" in err and "s3" not in err and "cret" not in err


@pytest.mark.parametrize(
    "dsn",
    [
        " postgresql://app:hunter2XYZ@db.example/usage",  # pasted after a space
        "\tpostgresql://app:hunter2XYZ@db.example/usage",
        "host=db.example password='hunter2XYZ dbname=usage",  # a quote left open
        "host=db.example password=hunter2XYZ dbnme=usage",  # a misspelt keyword
    ],
)
def test_a_dsn_libpq_cannot_read_is_never_shown(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dsn: str
) -> None:
    """``config`` masks the password of a DSN that parses: one libpq cannot read (whose writes
    fail, saying why without the password) was printed whole, in text and JSON."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_PG_DSN", dsn)
    code, out, err = cli("config", "--format", "json")
    assert code == 0, err
    shown = json.loads(out)["pg_dsn"]
    assert shown["value"] == "(not shown: a connection string libpq cannot read)"
    assert shown["source"] == "TOKENMETER_PG_DSN"
    code, out, err = cli("config")
    assert code == 0 and "hunter2" not in out + err
    assert "(not shown: a connection string libpq cannot read)" in out


def test_a_dsn_naming_its_schema_is_shown_masked(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``?schema=`` is tokenmeter's own parameter, which libpq never sees: a DSN with it was
    taken for one libpq cannot read, and not shown at all."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_PG_DSN", "postgresql://tm:hunter2@db/llm?schema=llm_usage")
    code, out, err = cli("config", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["pg_dsn"]["value"] == "postgresql://tm:***@db/llm?schema=llm_usage"


def test_json_carries_a_settings_exact_text_into_a_pipe(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bidi override in a setting was written as U+FFFD into the JSON (its text passed through
    the terminal filter): JSON, a machine format, keeps the text as set."""
    directory = str(tmp_path / "team\u202ecba")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_DIR", directory)
    code, out, _ = cli("config", "--format", "json")
    assert code == 0
    assert json.loads(out)["directory"]["value"] == directory


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "nope.json"),
        ('{"my-model": {"input_per_mtok": "cheap"}}', "my-model"),
    ],
    ids=["missing", "malformed"],
)
def test_a_prices_file_the_application_would_refuse_is_one_line_and_exit_2(
    cli: RunCli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    content: str | None,
    message: str,
) -> None:
    """``config`` showed TOKENMETER_PRICES=nope.json as a setting in force (exit 0) while
    configure() and instrument() refused it: the command one runs to see what is wrong said
    nothing was."""
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / "nope.json").write_text(content)
    monkeypatch.setenv("TOKENMETER_PRICES", "nope.json")
    code, out, err = cli("config", "--format", "json")
    assert (code, out) == (2, "")
    assert err.startswith("tokenmeter: error: ") and message in err and err.count("\n") == 1


def test_the_price_overrides_in_force_are_shown_with_their_source_and_no_other(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within a pyproject.toml its prices_file and its table both count; TOKENMETER_PRICES
    replaces both, and a project file missing under it is no error."""
    (tmp_path / "pyproject.toml").write_text(
        '[tool.tokenmeter]\nprices_file = "missing.toml"\n'
        '[tool.tokenmeter.prices]\n"my-model" = { input_per_mtok = 1, output_per_mtok = 1 }\n'
    )
    (tmp_path / "ops.toml").write_text("[ops-model]\ninput_per_mtok = 3\noutput_per_mtok = 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TOKENMETER_PRICES", "ops.toml")
    code, out, _ = cli("config", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["prices_file"] == {"value": "ops.toml", "source": "TOKENMETER_PRICES"}
    assert data["prices"] == {"value": {}, "source": "default"}
    (tmp_path / "missing.toml").write_text(
        "[file-model]\ninput_per_mtok = 1\noutput_per_mtok = 1\n"
    )
    monkeypatch.delenv("TOKENMETER_PRICES")
    code, out, _ = cli("config", "--format", "json")
    assert code == 0
    data = json.loads(out)
    where = f"{tmp_path / 'pyproject.toml'} [tool.tokenmeter]"
    assert data["prices_file"] == {"value": str(tmp_path / "missing.toml"), "source": where}
    assert data["prices"] == {
        "value": {"my-model": {"input_per_mtok": 1, "output_per_mtok": 1}},
        "source": where,
    }


def test_a_line_break_in_a_setting_cannot_forge_a_line_of_the_text_output(
    cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path holding a line break was printed raw: its rest read as a setting of its own
    (``pg_dsn  postgresql://elsewhere  [default]``). Such a text is shown quoted, escaped."""
    monkeypatch.chdir(tmp_path)
    directory = str(tmp_path / "m\npg_dsn  postgresql://elsewhere  [default]")
    monkeypatch.setenv("TOKENMETER_DIR", directory)
    code, text, _ = cli("config")
    assert code == 0
    lines = text.splitlines()
    assert [line.split()[0] for line in lines].count("pg_dsn") == 1
    assert len(lines) == len(json.loads(cli("config", "--format", "json")[1]))
    assert json.dumps(directory) in text
