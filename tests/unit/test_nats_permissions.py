"""The NATS users of a queue server: the committed sample is current, observers cannot control."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from qserver.protocol.api import REQUEST_TYPES
from qserver.protocol.subjects import Subjects
from services.stack.nats_permissions import (
    READ_ONLY_METHODS,
    beamline_pair,
    render_nkey_users,
    roles,
    sample_config,
    several_config,
)
from services.stack.natsserver import find_binary

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "accounts.conf"
CONTROL = ("queue_item_add", "queue_start", "environment_open", "re_pause", "queue_clear")


def test_committed_sample_is_current() -> None:
    assert SAMPLE.read_text() == sample_config(), (
        "deploy/nats/accounts.conf is stale: python -m services.stack.nats_permissions > "
        "deploy/nats/accounts.conf"
    )


def test_read_only_methods_are_real_methods() -> None:
    assert set(READ_ONLY_METHODS) <= set(REQUEST_TYPES)


def test_observer_may_publish_no_control_method() -> None:
    observer = {r.name: r for r in roles("qs.tst")}["observer"]
    for method in CONTROL:
        assert f"qs.tst.api.{method}" not in observer.publish
    assert "qs.tst.api.>" not in observer.publish
    assert "qs.tst.api.status" in observer.publish
    assert "qs.tst.events.>" in observer.subscribe


def test_every_prefixed_subject_is_under_the_prefix() -> None:
    for role in roles("qs.tst"):
        for subject in (*role.publish, *role.subscribe):
            assert subject.startswith(("qs.tst.", "$", "_INBOX.")), (role.name, subject)


def test_only_services_see_internal_subjects() -> None:
    for role in roles("qs.tst"):
        internal = "qs.tst.internal.>" in role.subscribe
        assert internal == (role.name in {"queue", "history", "worker"}), role.name


def test_several_beamlines_get_an_account_each_with_unique_user_names() -> None:
    text = several_config([("QS", "qs.default"), ("TST", "qs.tst")])
    users = re.findall(r'user: "([^"]+)"', text)
    assert len(users) == len(set(users)) == 2 * len(roles())
    assert "queue-tst" in users and "$NATS_TST_QUEUE_PASSWORD" in text
    assert text.count("accounts {") == 1  # nats-server takes one block
    env = {**os.environ, **{v: "x" for v in re.findall(r"\$(NATS_\w+)", text)}}
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write(text)
        f.flush()
        done = subprocess.run(
            [find_binary(), "-c", f.name, "-t"], env=env, capture_output=True, text=True
        )
    assert done.returncode == 0, done.stderr


def test_beamline_option_names_what_is_wrong() -> None:
    assert beamline_pair("tst=qs.tst") == ("TST", "qs.tst")
    with pytest.raises(argparse.ArgumentTypeError, match="ACCOUNT=PREFIX"):
        beamline_pair("qs.tst")
    with pytest.raises(argparse.ArgumentTypeError, match="invalid subject prefix"):
        beamline_pair("TST=qs tst")


def test_only_the_embedded_stacks_operator_may_read_the_status_from_jetstream() -> None:
    """JetStream answers at any reply subject, into any stream of the account (ADR 35): in a
    facility's config no person or program gets any of its API; in the embedded stack, whose
    owner holds every key, its operator may read the last status."""
    people, proposers = {"alice": ["primary"]}, {"agent": ["gated"]}
    services = {"queue", "history", "worker", "gateway"}
    for role in roles("qs.tst", people=people, proposers=proposers):
        if role.name not in services:
            assert not [p for p in role.publish if p.startswith("$JS")], role.name
    rendered = render_nkey_users({r.name: f"U{r.name}" for r in roles("qs.tst")}, "qs.tst")
    direct = Subjects("qs.tst").status_direct_get
    with_direct = [line for line in rendered.splitlines() if direct in line]
    assert len(with_direct) == 1 and '"qs.tst.as.operator.' in with_direct[0]
