"""Lists of request methods, as plain names: who may send what (ADR 30, ADR 34).

Kept apart from api.py and proposals.py (whose Structs they would drag in) for the stack's
supervisor, which writes nats-server's permissions from them and loads no msgspec.
"""

from __future__ import annotations

# Requests that only read, answered the same for everyone: what an observer may send, over
# NATS (services/stack/nats_permissions.py) and the others' lists derived from it (the 0MQ
# bridge's observe level, the gated groups' methods, the status copy's reads).
READ_ONLY_METHODS = (
    "ping",
    "status",
    "queue_get",
    "queue_item_get",
    "history_get",
    "history_result_get",
    "history_runs",
    "history_run_item",
    "plans_allowed",
    "devices_allowed",
    "plans_existing",
    "devices_existing",
    "permissions_get",
    "lock_info",
    "re_runs",
    "console_output",
    "console_output_uid",
    "console_output_update",
    "task_status",
    "task_result",
)

# What a member of a gated group may ask for: reads, and adds that become proposals. Every
# other request of theirs is refused by the gateway, the 0MQ bridge and the queue service;
# over NATS their user is a `proposer` (services/stack/nats_permissions.py). Not
# `config_get`: in kernel mode it gives the kernel's key, with which one runs any code.
GATED_METHODS = (frozenset(READ_ONLY_METHODS) - {"permissions_get"}) | {
    "re_metadata",
    "item_dry_run",
    "queue_item_add",  # becomes a proposal
    "queue_item_add_batch",  # each item becomes a proposal
    "proposal_add",
    "proposal_list",
    "proposal_get",
    "proposal_gate",
}
# Reviewing: what the `write:queue:approve` scope allows.
REVIEW_METHODS = frozenset({"proposal_update", "proposal_approve", "proposal_reject"})
