"""NATS credentials and TLS settings from the environment and flags; JSON log lines."""

from __future__ import annotations

import argparse
import json
import logging
import ssl
from pathlib import Path

import pytest

from qserver.connect import ENV_VARS, NatsAuth, NatsConfigError, add_arguments, servers
from qserver.jsonlog import JsonFormatter, QuietNatsErrors, make_formatter


def test_user_and_password_from_env_become_connect_options() -> None:
    env = {"QSERVER_NATS_USER": "observer", "QSERVER_NATS_PASSWORD": "pw"}
    assert NatsAuth.from_env(env).connect_options() == {
        "user": "observer",
        "password": "pw",
        "inbox_prefix": "_INBOX.observer",  # it may read replies there only
    }


def test_nothing_configured_adds_no_options() -> None:
    assert NatsAuth.from_env({}).connect_options() == {}


def test_flags_override_the_environment(tmp_path: Path) -> None:
    creds = tmp_path / "u.creds"
    creds.write_text("creds")
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--nats-creds", str(creds)])
    env = {"QSERVER_NATS_USER": "u", "QSERVER_NATS_PASSWORD": "p", "QSERVER_NATS_TLS_CA": "/ca"}
    auth = NatsAuth.from_args(args, env)
    # The flag's way to authenticate replaces the environment's; TLS settings stay.
    assert auth == NatsAuth(creds=str(creds), tls_ca="/ca")


def test_two_ways_to_authenticate_are_refused() -> None:
    env = {"QSERVER_NATS_TOKEN": "t", "QSERVER_NATS_CREDS": "/x"}
    with pytest.raises(NatsConfigError, match="only one way"):
        NatsAuth.from_env(env).connect_options()


def test_password_without_user_names_the_variables() -> None:
    with pytest.raises(NatsConfigError, match="QSERVER_NATS_PASSWORD is set without"):
        NatsAuth(password="pw").connect_options()


def test_missing_files_and_half_a_client_certificate_are_named(tmp_path: Path) -> None:
    with pytest.raises(NatsConfigError, match="QSERVER_NATS_NKEY: no such file"):
        NatsAuth(nkey=str(tmp_path / "none.nk")).connect_options()
    with pytest.raises(NatsConfigError, match="go together"):
        NatsAuth(tls_cert=str(tmp_path / "c.pem")).connect_options()


def test_token_nkey_and_creds_map_to_nats_py_names(tmp_path: Path) -> None:
    seed = tmp_path / "seed.nk"
    seed.write_text("SU...")
    assert NatsAuth(token="t").connect_options() == {"token": "t"}
    assert NatsAuth(nkey=str(seed)).connect_options() == {"nkeys_seed": str(seed)}
    assert NatsAuth(creds=str(seed)).connect_options() == {"user_credentials": str(seed)}


def test_a_ca_file_gives_a_verifying_tls_context(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(ssl.DER_cert_to_PEM_cert(b"not a certificate"))
    with pytest.raises(NatsConfigError, match="QSERVER_NATS_TLS_CA: not a CA certificate"):
        NatsAuth(tls_ca=str(ca)).connect_options()  # the file is read, not just named
    ctx = NatsAuth(tls_ca=ssl.get_default_verify_paths().cafile or "").tls_context()
    assert ctx is None or ctx.verify_mode == ssl.CERT_REQUIRED


def test_environ_round_trips_for_child_processes() -> None:
    auth = NatsAuth(user="worker", password="pw")
    assert auth.environ() == {"QSERVER_NATS_USER": "worker", "QSERVER_NATS_PASSWORD": "pw"}
    assert NatsAuth.from_env(auth.environ()) == auth
    assert set(ENV_VARS.values()) >= set(auth.environ())


def test_the_inbox_prefix_comes_from_the_user_name_or_is_given() -> None:
    assert NatsAuth(user="operator-tst", password="pw").inbox == "_INBOX.operator-tst"
    assert NatsAuth(user="a.b", password="pw").inbox == "_INBOX"  # not one subject token
    given = NatsAuth.from_env({"QSERVER_NATS_TOKEN": "t", "QSERVER_NATS_INBOX_PREFIX": "_INBOX.x"})
    assert given.connect_options() == {"token": "t", "inbox_prefix": "_INBOX.x"}
    # A user given as a flag replaces the environment's credentials and their inbox prefix.
    flagged = NatsAuth.from_env(
        {"QSERVER_NATS_TOKEN": "t", "QSERVER_NATS_INBOX_PREFIX": "_INBOX.x"}, user="observer"
    )
    assert flagged.inbox == "_INBOX.observer"
    with pytest.raises(NatsConfigError, match="QSERVER_NATS_INBOX_PREFIX must be _INBOX"):
        NatsAuth(inbox_prefix="replies.me").connect_options()


def test_method_names_the_user_but_never_the_secret() -> None:
    assert NatsAuth(user="op", password="secret").method == "user 'op'"
    assert "s3cr3t" not in NatsAuth(token="s3cr3t").method


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    rec = logging.LogRecord("services.queue", logging.ERROR, "f.py", 1, msg, args, exc_info)
    rec.item_uid = "abc"
    return rec


def test_json_log_line_has_time_level_logger_message_and_extras() -> None:
    line = JsonFormatter().format(record("item %s failed", "x"))
    out = json.loads(line)
    assert "\n" not in line
    assert out["level"] == "ERROR"
    assert out["logger"] == "services.queue"
    assert out["message"] == "item x failed"
    assert out["item_uid"] == "abc"
    assert out["time"].endswith("+00:00")


def test_json_log_line_carries_the_exception_text() -> None:
    out = json.loads(JsonFormatter().format(record("failed", exc=True)))
    assert "ValueError: boom" in out["exception"]


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        make_formatter("xml")


def nats_error_record(created: float) -> logging.LogRecord:
    try:
        raise ConnectionError("nats: 'Authorization Violation'")
    except ConnectionError:
        import sys

        exc_info = sys.exc_info()
    rec = logging.LogRecord(
        "nats.aio.client", logging.ERROR, "c.py", 1, "nats: encountered error", None, exc_info
    )
    rec.created = created
    return rec


def test_repeated_nats_errors_become_one_line_every_half_minute() -> None:
    f = QuietNatsErrors(every=30)
    first = nats_error_record(100.0)
    assert f.filter(first)
    assert first.exc_info is None
    assert first.getMessage() == (
        "nats: encountered error: ConnectionError(\"nats: 'Authorization Violation'\")"
    )
    assert not any(f.filter(nats_error_record(100.0 + i)) for i in range(1, 10))
    later = nats_error_record(131.0)
    assert f.filter(later)
    assert later.getMessage().endswith("(9 more since the last report)")


def test_comma_separated_urls_become_a_server_list() -> None:
    assert servers("nats://a:4222, nats://b:4222,") == ["nats://a:4222", "nats://b:4222"]
    assert servers("nats://localhost:4222") == ["nats://localhost:4222"]
