"""Which server gets the local stack's key, and which replies a service sends."""

from __future__ import annotations

from pathlib import Path

from qserver.connect import NatsAuth
from qserver.localstack import _entry, is_stack_nats, stack_credentials
from services.runtime.replies import reply_allowed

CLIENT = {"role": "operator", "nkey": "/d/nats-keys/operator.nk", "inbox_prefix": "_INBOX.operator"}
STACK = {"nats_url": "nats://127.0.0.1:4333", "prefix": "qs.tst", "nats_client": CLIENT}


def test_the_key_goes_only_to_the_stacks_own_server() -> None:
    for url in ("nats://127.0.0.1:4333", "nats://localhost:4333", "localhost:4333"):
        assert is_stack_nats(url, STACK), url
    for url in ("nats://127.0.0.1:4222", "nats://beamline:4333", "nats://10.0.0.1:4333"):
        assert not is_stack_nats(url, STACK), url
    auth = stack_credentials("nats://localhost:4333", NatsAuth(tls_ca="/ca"), STACK)
    assert auth == NatsAuth(
        nkey="/d/nats-keys/operator.nk", inbox_prefix="_INBOX.operator", tls_ca="/ca"
    )
    assert stack_credentials("nats://beamline:4333", NatsAuth(), STACK) == NatsAuth()


def test_credentials_of_ones_own_win_over_the_stacks() -> None:
    mine = NatsAuth(user="observer", password="pw")
    assert stack_credentials("nats://127.0.0.1:4333", mine, STACK) == mine
    # A stack on an existing NATS (--nats-url) has no key to give.
    remote = {**STACK, "nats_client": None}
    assert stack_credentials("nats://127.0.0.1:4333", NatsAuth(), remote) == NatsAuth()


def test_services_answer_inboxes_and_their_own_jetstream_deliveries_only() -> None:
    assert reply_allowed("qs.tst.api.status", "_INBOX.operator.abc.1")
    assert reply_allowed("qs.tst.api.status", "")  # nothing to answer
    assert not reply_allowed("qs.tst.api.status", "qs.tst.internal.results")
    assert not reply_allowed("$SRV.PING", "$JS.ACK.QS_TST_RESULTS.queue-results.1.5.5.0.0")
    # A JetStream delivery comes through one of the connection's inboxes.
    assert reply_allowed("_INBOX.queue.xyz", "$JS.ACK.QS_TST_RESULTS.queue-results.1.5.5.0.0")


def test_a_registry_entry_per_data_dir_named_after_it(tmp_path: Path) -> None:
    a, b = tmp_path / "one" / "data", tmp_path / "two" / "data"
    for d in (a, b):
        d.mkdir(parents=True)
    (tmp_path / "link").symlink_to(a)
    assert (
        _entry(a) == _entry(tmp_path / "link") == _entry(tmp_path / "one" / ".." / "one" / "data")
    )
    assert _entry(a) != _entry(b)  # the same name, another directory
    assert _entry(a).name.startswith("data-") and _entry(a).suffix == ".json"
    odd = tmp_path / "beam line: 7"
    odd.mkdir()
    assert _entry(odd).name.startswith("beam_line__7-")
