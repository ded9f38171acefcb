"""Who a 0MQ request is from and what it may do: local processes, keyed clients, settings."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import zmq

from services.zmq_bridge.access import (
    OWNER,
    Denied,
    authorize,
    principal_of,
)
from services.zmq_bridge.keys import (
    REFERENCE_CLIENT_PUBLIC_KEY,
    BadKey,
    ClientKey,
    load_client_keys,
    public_key_of,
)
from services.zmq_bridge.settings import SettingsError, endpoint, from_args

ALICE = ClientKey(REFERENCE_CLIENT_PUBLIC_KEY, "alice", "test_user", "control")
VIEWER = ClientKey("x" * 40, "viewer", "primary", "observe")
ITEM = {"item": {"item_type": "plan", "name": "count"}, "user": "mallory", "user_group": "admin"}


def test_a_local_process_keeps_the_user_and_group_it_sends() -> None:
    assert principal_of("local", ()) is OWNER
    assert authorize(OWNER, "queue_item_add", ITEM) == ITEM
    assert authorize(OWNER, "manager_stop", {}) == {}


def test_a_keyed_client_gets_the_user_and_group_of_its_entry() -> None:
    p = principal_of("key:0", (ALICE,))
    params = authorize(p, "queue_item_add", ITEM)
    assert params["user"] == "alice" and params["user_group"] == "test_user"
    assert params["item"] == ITEM["item"]


def test_identity_is_set_where_the_method_takes_it_even_if_the_client_left_it_out() -> None:
    p = principal_of("key:0", (ALICE,))
    assert authorize(p, "plans_allowed", {}) == {"user_group": "test_user"}
    assert authorize(p, "queue_get", {}) == {}  # takes neither


def test_identity_fields_of_methods_the_protocol_does_not_know_are_replaced_too() -> None:
    p = principal_of("key:0", (ALICE,))
    params = authorize(p, "function_execute", {"item": {}, "user": "x", "user_group": "y"})
    assert (params["user"], params["user_group"]) == ("alice", "test_user")


def test_control_access_excludes_the_admin_methods() -> None:
    p = principal_of("key:0", (ALICE,))
    for method in ("manager_stop", "permissions_set", "lock", "manager_kill"):
        with pytest.raises(Denied, match=f"does not allow '{method}'"):
            authorize(p, method, {})
    assert authorize(p, "queue_start", {}) == {}


def test_observe_access_allows_reading_only() -> None:
    p = principal_of("key:1", (ALICE, VIEWER))
    assert authorize(p, "status", {}) == {}
    with pytest.raises(Denied, match="'observe' access"):
        authorize(p, "queue_item_add", ITEM)


@pytest.mark.parametrize("user_id", [None, "", "key:7", "key:x", "someone"])
def test_a_connection_the_gate_did_not_name_is_refused(user_id: str | None) -> None:
    with pytest.raises(Denied, match="not authorized"):
        principal_of(user_id, (ALICE,))


def test_the_references_fixed_client_key_is_known() -> None:
    # Every reference client uses this pair (it is in their source): it identifies no one.
    assert public_key_of("=@e7WwVuz{*eGcnv{AL@x2hmX!z^)wP3vKsQ{S7s") == REFERENCE_CLIENT_PUBLIC_KEY


# ----- the client keys file -----


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clients.yaml"
    path.write_text(text)
    return path


def test_client_keys_file_maps_keys_to_users(tmp_path: Path) -> None:
    public, _ = zmq.curve_keypair()
    path = write(
        tmp_path,
        f"clients:\n  - public_key: '{public.decode()}'\n    user: bob\n"
        "    user_group: primary\n    access: observe\n",
    )
    assert load_client_keys(path) == (ClientKey(public.decode(), "bob", "primary", "observe"),)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("clients:\n  - user: bob\n    user_group: primary\n", "lacks public_key"),
        ("clients:\n  - {public_key: abc, user: b, user_group: p}\n", "40-character"),
        (
            f"clients:\n  - {{public_key: '{'x' * 40}', user: b, user_group: p, access: root}}\n",
            "access",
        ),
        (
            f"clients:\n  - {{public_key: '{'x' * 40}', user: b, user_group: p, role: x}}\n",
            "unknown",
        ),
        ("users: []\n", "must be a mapping with 'clients'"),
        (f"clients:\n  - {{public_key: '{'~' * 40}', user: b, user_group: p}}\n", "z85"),
    ],
)
def test_a_bad_client_keys_file_is_refused_naming_the_problem(
    tmp_path: Path, text: str, error: str
) -> None:
    with pytest.raises(BadKey, match=error):
        load_client_keys(write(tmp_path, text))


# ----- settings: nothing beyond loopback without keys -----


def args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = {
        "control_addr": "tcp://127.0.0.1:60615",
        "info_addr": "tcp://127.0.0.1:60625",
        "publish_console": True,
        "encoding": "json",
        "client_keys": None,
        "local_users": "owner",
        "info_public": False,
        "timeout": 10.0,
        "private_key_file": None,
    }
    return argparse.Namespace(**{**base, **kw})


def test_the_defaults_serve_loopback_without_encryption(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER", raising=False)
    monkeypatch.delenv("QSERVER_ZMQ_PRIVATE_KEY", raising=False)
    s = from_args(args())
    assert s.control.loopback and s.private_key is None and s.policy.local_users == "owner"


def test_a_public_control_address_needs_curve_and_client_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER", raising=False)
    with pytest.raises(SettingsError, match="needs CurveZMQ"):
        from_args(args(control_addr="tcp://*:60615"))
    _, secret = zmq.curve_keypair()
    monkeypatch.setenv("QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER", secret.decode())
    with pytest.raises(SettingsError, match="client keys file"):
        from_args(args(control_addr="tcp://0.0.0.0:60615"))
    public, _ = zmq.curve_keypair()
    keys = write(
        tmp_path, f"clients:\n  - {{public_key: '{public.decode()}', user: a, user_group: p}}\n"
    )
    s = from_args(args(control_addr="tcp://0.0.0.0:60615", client_keys=str(keys)))
    assert s.public_key == public_key_of(secret.decode())


def test_a_public_console_feed_must_be_asked_for() -> None:
    with pytest.raises(SettingsError, match="info_public"):
        from_args(args(info_addr="tcp://*:60625"))
    assert from_args(args(info_addr="tcp://*:60625", info_public=True)).info is not None


def test_a_malformed_private_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER", "too-short")
    with pytest.raises(SettingsError, match="40-character"):
        from_args(args())


@pytest.mark.parametrize("text", ["localhost:60615", "tcp://host", "ipc:///tmp/x", "tcp://h:99999"])
def test_addresses_are_tcp_host_and_port(text: str) -> None:
    with pytest.raises(SettingsError, match="must look like"):
        endpoint(text, "the control address")


def test_the_keys_tool_makes_a_pair_and_derives_a_public_key(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from services.zmq_bridge.keys import main

    main([])
    # Its two lines by their labels: in a long run another test's thread may print too.
    made = {
        line.split(" ", 1)[0]: line.split(": ", 1)[1].strip()
        for line in capsys.readouterr().out.splitlines()
        if line.startswith(("Private key (", "Public key ("))
    }
    private, public = made["Private"], made["Public"]
    assert public_key_of(private) == public
    main(["--zmq-private-key", private])
    assert public in capsys.readouterr().out
    with pytest.raises(SystemExit, match="40-character"):
        main(["--zmq-private-key", "short"])


def test_the_keys_tool_takes_a_private_key_that_begins_with_a_dash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 1 key in 85 begins with "-" (Z85), which argparse would take for an option.
    from services.zmq_bridge.keys import main

    for _ in range(10_000):
        pub, sec = zmq.curve_keypair()
        if sec.startswith(b"-"):
            break
    else:
        pytest.fail("no private key beginning with '-' in 10,000")
    main(["--zmq-private-key", sec.decode()])
    assert pub.decode() in capsys.readouterr().out
    main([f"--zmq-private-key={sec.decode()}"])
    assert pub.decode() in capsys.readouterr().out
