"""Subject and JetStream resource names, all derived from one configurable prefix."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "qs.default"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def check_prefix(prefix: str) -> str:
    """Return the prefix if it is a valid dotted NATS token sequence, else raise ValueError."""
    if not _PREFIX_RE.match(prefix):
        raise ValueError(
            f"invalid subject prefix {prefix!r}: "
            "use dot-separated tokens of letters, digits, - and _"
        )
    return prefix


# Methods whose params name who acts (`user`) or in which group (`user_group`). A client that
# is not trusted with these sends them to `<prefix>.as.<user>.<group>.api.<method>`, where
# NATS permissions let each user name only itself and its groups; the service takes the
# identity from the subject, not the body (ADR 24).
IDENTITY_METHODS: dict[str, tuple[bool, bool]] = {  # method: (sets user, sets user_group)
    "queue_item_add": (True, True),
    "queue_item_add_batch": (True, True),
    "queue_item_update": (True, True),
    "queue_item_execute": (True, True),
    "function_execute": (True, True),
    "item_dry_run": (True, True),  # an item body is checked as the caller's (ADR 31)
    "lock": (True, False),
    "plans_allowed": (False, True),
    "devices_allowed": (False, True),
    # Proposals (ADR 30): who proposes and who reviews, and in which group (a gated group
    # may propose but not review).
    "proposal_add": (True, True),
    "proposal_update": (True, True),
    "proposal_approve": (True, True),
    "proposal_reject": (True, True),
}
NO_GROUP = "_"  # the group token of methods that take no group (`lock`)
# NATS users that may send identity methods on `<prefix>.api.`: they set identities
# themselves (the gateway from its logins) or are services.
TRUSTED_ROLES = ("queue", "history", "worker", "gateway", "zmq_bridge")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def identity_token(name: str, what: str = "user name") -> str:
    """`name` if it can be one subject token of an identity subject, else ValueError."""
    if not _TOKEN_RE.match(name):
        raise ValueError(
            f"the {what} {name!r} cannot name a NATS identity: use letters, digits, - and _"
        )
    return name


@dataclass(frozen=True)
class Subjects:
    """Every subject and stream name used by one queue server instance."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    # Public request-reply API: `<prefix>.api.<method>`.
    def api(self, method: str) -> str:
        return f"{self.prefix}.api.{method}"

    def api_as(self, user: str, group: str, method: str) -> str:
        """`<prefix>.as.<user>.<group>.api.<method>`: a request whose identity NATS vouches for."""
        return f"{self.prefix}.as.{user}.{group}.api.{method}"

    @property
    def api_wildcard(self) -> str:
        # For permissions and watching only: a service subscribed to it would stand in for
        # every method, and NATS could no longer say at once that a service is down (ADR 13).
        return f"{self.prefix}.api.>"

    # Events, for subscribers.
    @property
    def status_event(self) -> str:
        return f"{self.prefix}.events.status"

    @property
    def console_event(self) -> str:
        return f"{self.prefix}.events.console"

    @property
    def proposals_event(self) -> str:
        """A proposal was made, edited, approved or rejected (ADR 30): `ProposalEvent`."""
        return f"{self.prefix}.events.proposals"

    @property
    def run_saved_event(self) -> str:
        """A run is complete in the catalog: `{run_uid, scan_id, item_uid, user, url, ...}`."""
        return f"{self.prefix}.events.run_saved"

    @property
    def progress_event(self) -> str:
        """Live progress of the running plan's runs (`qserver.protocol.progress`, ADR 25)."""
        return f"{self.prefix}.events.progress"

    def docs(self, name: str) -> str:
        """Run documents, live: `<prefix>.docs.start`, `.descriptor`, `.event`, `.stop`, ..."""
        return f"{self.prefix}.docs.{name}"

    def run_docs(self, run_uid: str) -> str:
        """The document stream's subject of one run: msgpack `[name, doc]`, in order."""
        return f"{self.prefix}.docs.run.{run_uid}"

    @property
    def run_docs_wildcard(self) -> str:
        return f"{self.prefix}.docs.run.*"

    # Internal subjects between services.
    @property
    def queue_log(self) -> str:
        return f"{self.prefix}.internal.queue.log"

    @property
    def history_log(self) -> str:
        return f"{self.prefix}.internal.history.log"

    @property
    def history_changed(self) -> str:
        return f"{self.prefix}.internal.history.changed"

    @property
    def history_info(self) -> str:
        return f"{self.prefix}.internal.history.info"

    @property
    def lock_check(self) -> str:
        return f"{self.prefix}.internal.queue.lock_check"

    def leader_ping(self, token: str) -> str:
        """A standby's "alive?" to the queue service that holds the leader lease (ADR 28)."""
        return f"{self.prefix}.internal.queue.leader.{token}"

    def worker_cmd(self, cmd: str) -> str:
        return f"{self.prefix}.internal.worker.{cmd}"

    @property
    def worker_state(self) -> str:
        return f"{self.prefix}.internal.worker.events.state"

    def env_cmd(self, cmd: str) -> str:
        return f"{self.prefix}.internal.env.{cmd}"

    @property
    def env_state(self) -> str:
        return f"{self.prefix}.internal.env.events.state"

    @property
    def results(self) -> str:
        return f"{self.prefix}.internal.results"

    # JetStream resources. Stream and bucket names may not contain dots.
    @property
    def _token(self) -> str:
        return self.prefix.replace(".", "_").upper()

    @property
    def queue_stream(self) -> str:
        return f"QS_{self._token}_QUEUE"

    @property
    def history_stream(self) -> str:
        return f"QS_{self._token}_HISTORY"

    @property
    def results_stream(self) -> str:
        return f"QS_{self._token}_RESULTS"

    @property
    def progress_stream(self) -> str:
        """Keeps the last progress event (ADR 25)."""
        return f"QS_{self._token}_PROGRESS"

    @property
    def status_stream(self) -> str:
        """Keeps the last status event in memory, for a JetStream direct get (ADR 35)."""
        return f"QS_{self._token}_STATUS"

    @property
    def status_direct_get(self) -> str:
        """The last status event from nats-server itself: `status` without the queue service."""
        return f"$JS.API.DIRECT.GET.{self.status_stream}.{self.status_event}"

    @property
    def console_stream(self) -> str:
        """The recent console output (`events.console`), bounded: the backlog every reader gets."""
        return f"QS_{self._token}_CONSOLE"

    @property
    def docs_stream(self) -> str:
        """Every run document, durable: what the catalog and the Kafka export read."""
        return f"QS_{self._token}_DOCS"

    @property
    def docs_positions_bucket(self) -> str:
        """How far each reader of the document stream got (`catalog`, `kafka`)."""
        return f"QS_{self._token}_DOCS_READ"

    @property
    def lists_bucket(self) -> str:
        return f"QS_{self._token}_LISTS"

    @property
    def re_md_bucket(self) -> str:
        """KV bucket holding the RunEngine's persistent metadata (`RE.md`, scan_id included)."""
        return f"QS_{self._token}_RE_MD"

    @property
    def leader_bucket(self) -> str:
        """KV bucket holding the queue service's leader lease."""
        return f"QS_{self._token}_LEADER"

    @property
    def snapshot_bucket(self) -> str:
        return f"QS_{self._token}_SNAPSHOTS"

    @property
    def auth_bucket(self) -> str:
        """KV bucket of logins: principals, identities, sessions, API keys (hashed)."""
        return f"QS_{self._token}_AUTH"

    @property
    def result_texts_bucket(self) -> str:
        """Object store of the whole `msg`/`traceback` of results cut for storage (ADR 8)."""
        return f"QS_{self._token}_RESULT_TEXTS"

    @property
    def task_results_bucket(self) -> str:
        """KV bucket of finished tasks' results (`function_execute`, `script_upload`, ...)."""
        return f"QS_{self._token}_TASKS"
