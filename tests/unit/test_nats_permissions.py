"""The NATS users of a queue server: the committed sample is current, observers cannot control."""

from __future__ import annotations

from pathlib import Path

from qserver.nats_permissions import READ_ONLY_METHODS, roles, sample_config
from qserver.protocol.api import REQUEST_TYPES

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "accounts.conf"
CONTROL = ("queue_item_add", "queue_start", "environment_open", "re_pause", "queue_clear")


def test_committed_sample_is_current() -> None:
    assert SAMPLE.read_text() == sample_config(), (
        "deploy/nats/accounts.conf is stale: python -m qserver.nats_permissions > "
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
