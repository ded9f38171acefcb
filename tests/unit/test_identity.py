"""Identity from the subject (ADR 24) and the slow-down of wrong passwords: pure logic."""

from __future__ import annotations

import json

import pytest

from qserver.client import acting_user
from qserver.errors import BadRequest
from services.gateway.throttle import FREE, MAX_DELAY_S, LoginThrottle
from services.runtime.identity import identity_subject, subject_identity, vouched_params
from services.stack.nats_permissions import person, roles


def test_the_subjects_identity_replaces_the_bodys() -> None:
    subject = "qs.api.as.alice.primary.api.queue_item_add"  # a prefix may hold `api`
    assert subject_identity(subject) == ("alice", "primary")
    body = json.dumps({"item": {}, "user": "mallory", "user_group": "admin"}).encode()
    out = json.loads(vouched_params("queue_item_add", subject, body))
    assert (out["user"], out["user_group"]) == ("alice", "primary")
    lock = json.loads(vouched_params("lock", "qs.as.bob._.api.lock", b'{"user": "x"}'))
    assert lock["user"] == "bob" and "user_group" not in lock
    with pytest.raises(BadRequest):
        vouched_params("lock", "qs.as.bob._.api.lock", b"[1]")
    assert identity_subject("qs.api.api.lock") == "qs.api.as.*.*.api.lock"


def test_clients_act_as_their_own_user_unless_trusted() -> None:
    assert acting_user("_INBOX.operator") == "operator"
    assert acting_user("_INBOX.alice") == "alice"
    for trusted in ("_INBOX.gateway", "_INBOX.queue-tst", "_INBOX", "_INBOX.a.b"):
        assert acting_user(trusted) is None


def test_a_person_may_name_only_itself_and_its_groups() -> None:
    alice = person("qs.x", "alice", ["primary", "test_user"])
    assert "qs.x.as.alice.test_user.api.queue_item_add" in alice.publish
    assert not any(".as.bob." in s or ".as.*" in s for s in alice.publish)
    assert "qs.x.api.queue_item_add" in alice.deny_publish
    operator = next(r for r in roles("qs.x") if r.name == "operator")
    assert "qs.x.api.lock" in operator.deny_publish
    with pytest.raises(ValueError, match="cannot name a NATS identity"):
        person("qs.x", "a.b", ["primary"])


def test_failures_slow_tries_down_up_to_a_bound() -> None:
    t = LoginThrottle()
    for _ in range(FREE - 1):
        t.failed("toy", "bob", "10.0.0.1")
    assert t.delay("bob", "10.0.0.2") == 0.0
    t.failed("toy", "bob", "10.0.0.1")
    assert 0 < t.delay("bob", "10.0.0.2") < t.delay("bob", "10.0.0.1") + 1
    for _ in range(50):
        t.failed("toy", "bob", "10.0.0.1")
    assert t.delay("bob", "10.0.0.3") == MAX_DELAY_S
    assert t.delay("alice", "10.0.0.1") == MAX_DELAY_S  # the address is slowed too
    t.succeeded("bob")
    assert t.delay("bob", "10.0.0.3") == 0.0
