"""pytest plugin: bluesky-queueserver-api's own tests, unchanged, against our embedded stack.

The tests (`bluesky_queueserver_api/tests/` of the wheel) start the reference's servers with
fixtures of bluesky-queueserver (`re_manager`, `re_manager_cmd`, ...) and bluesky-httpserver
(`fastapi_server`, `fastapi_server_fs`, ...). This plugin puts ours in their place before
the test modules import them: one stack per session (per xdist worker), its state reset at
the start of each test as a fresh manager's (queue and history empty, environment closed, no
lock, default queue mode and permissions), restarted only when a test asks for other manager
options.

Where a test expects no server (the reference's fixtures not requested), the default
addresses point to a closed port. Docs: docs/reference-tests.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from reftests_stack import (
    API_KEY_FOR_TESTS,
    ClosedPort,
    ExtraGateway,
    Resetter,
    RunningStack,
    StackOptions,
    StackRunner,
    bind_address,
    free_port,
)

REPO = Path(__file__).resolve().parents[2]
REFERENCE_HTTP_PORT = 60610  # bluesky-httpserver's default: "the" HTTP server of the tests
ZMQ_OFF_REASON = "0MQ mode is off (make test-reference REFTESTS_ZMQ=1 turns it on)"
AUTH_SERVER_REASON = (
    "needs bluesky-httpserver's logins (an authentication provider: passwords, tokens, "
    "sessions, keys made over HTTP), which this gateway does not have (no --auth-store)"
)
# Cases that cannot be played here, and why (the reason is printed with the skip).
SKIPS = {
    "test_system_info_monitor_02": (
        "runs no manager at all (re_manager_cmd is never called) and expects silence on "
        "/api/info/ws; a stack always runs its manager, which publishes its status every "
        "second, as the reference's does"
    ),
}
# Cases that bind the reference's fixed ports (60611, 60616, 60617, 60650): they take a lock
# that every worker (and every run on this machine) shares, so they run one at a time.
FIXED_PORTS = frozenset({"test_ReManagerAPI_parameters_01", "test_ReManagerComm_ZMQ_02"})
FIXED_PORTS_LOCK = Path(tempfile.gettempdir()) / f"qserver-reftests-fixed-ports-{os.getuid()}.lock"
SERVER_FIXTURES = frozenset({"re_manager", "re_manager_cmd", "fastapi_server", "fastapi_server_fs"})
# The reference's start-re-manager options that change nothing here.
IGNORED_OPTIONS = ("--verbose", "--quiet", "--silent", "--redis-name-prefix", "--redis-addr")

# ----- options -----


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("reftests", "the reference client's tests against qserver")
    g.addoption(
        "--qserver-python",
        default=os.environ.get("REFTESTS_QSERVER_PYTHON", str(REPO / ".venv" / "bin" / "python")),
        help="the Python of the project's venv, which runs the stack",
    )
    g.addoption(
        "--reftests-zmq",
        action="store_true",
        default=os.environ.get("REFTESTS_ZMQ", "") not in ("", "0"),
        help="also run the 0MQ cases, against the stack's 0MQ bridge",
    )
    g.addoption(
        "--reftests-report",
        default=os.environ.get("REFTESTS_REPORT"),
        help="write one JSON line per case (outcome, duration, message) to this file",
    )
    g.addoption(
        "--reftests-expected",
        default=os.environ.get("REFTESTS_EXPECTED"),
        help="a file of known failures (nodeid | owner | cause): they run as strict xfail",
    )


class Harness:
    """The session's state: the stack runner and its default addresses."""

    def __init__(self, config: pytest.Config, workdir: Path) -> None:
        self.zmq = bool(config.getoption("--reftests-zmq"))
        self.runner = StackRunner(
            config.getoption("--qserver-python"), REPO, workdir, http_port=config.stash[_HTTP_PORT]
        )
        self.closed_http = ClosedPort()
        self.closed_zmq = ClosedPort()
        self.closed_zmq_info = ClosedPort()
        self.gateways: list[ExtraGateway] = []

    # -- addresses the client finds by default (QSERVER_HTTP_SERVER_URI and the 0MQ ones)

    @property
    def http_default(self) -> str:
        return f"http://localhost:{self.runner.ports.http}"

    def point_http(self, mp: pytest.MonkeyPatch, url: str | None) -> None:
        mp.setenv("QSERVER_HTTP_SERVER_URI", url or f"http://localhost:{self.closed_http.port}")

    def point_zmq(self, mp: pytest.MonkeyPatch, opts: StackOptions | None) -> None:
        """The 0MQ defaults: the bridge's session ports, unless closed (no manager, no 0MQ
        mode) or the test gave the manager addresses of its own (then it names them)."""
        bridge = opts is not None and self.zmq
        ports = self.runner.ports
        control_ok = bridge and opts is not None and opts.zmq_control is None
        info_ok = bridge and opts is not None and opts.zmq_info is None
        control = ports.zmq_control if control_ok else self.closed_zmq.port
        info = ports.zmq_info if info_ok else self.closed_zmq_info.port
        mp.setenv("QSERVER_ZMQ_CONTROL_ADDRESS", f"tcp://localhost:{control}")
        mp.setenv("QSERVER_ZMQ_INFO_ADDRESS", f"tcp://localhost:{info}")

    # -- the manager

    def default_options(self) -> StackOptions:
        return StackOptions(zmq=self.zmq)

    def stack(self, opts: StackOptions | None = None) -> RunningStack:
        """The running stack with `opts` (the current one's, or the defaults)."""
        if opts is None:
            current = self.runner.stack
            opts = current.opts if current is not None else self.default_options()
        return self.runner.ensure(opts)

    def fresh_manager(self, opts: StackOptions) -> RunningStack:
        """The stack with `opts`, in a fresh manager's state.

        A stack that cannot be reset (a previous case left it stuck) is replaced by a new one,
        so that one bad case does not fail the ones after it.
        """
        stack = self.stack(opts)
        try:
            Resetter(stack.http_url, self.runner.emergency_key).reset()
        except (RuntimeError, httpx.HTTPError) as e:
            print(f"reftests: the stack could not be reset ({e}); starting a new one")
            self.runner.stop()
            stack = self.stack(opts)
            Resetter(stack.http_url, self.runner.emergency_key).reset()
        return stack

    def stop_gateways(self) -> None:
        while self.gateways:
            self.gateways.pop().stop()

    def close(self) -> None:
        self.stop_gateways()
        self.runner.stop()
        for p in (self.closed_http, self.closed_zmq, self.closed_zmq_info):
            p.close()


_HARNESS = pytest.StashKey[Harness]()


def harness(request: pytest.FixtureRequest) -> Harness:
    return _harness_of(request.config)


def _harness_of(config: pytest.Config) -> Harness:
    """The session's harness, made at first use (an xdist controller never needs one)."""
    if _HARNESS not in config.stash:
        workdir = Path(tempfile.mkdtemp(prefix="qserver-reftests-"))
        config.stash[_HARNESS] = Harness(config, workdir)
    return config.stash[_HARNESS]


class _Current:
    """This process's pytest config, for helpers the tests call outside fixtures."""

    config: pytest.Config | None = None

    def harness(self) -> Harness:
        assert self.config is not None
        return _harness_of(self.config)


_CURRENT = _Current()


def parse_manager_options(params: list[str], env: dict[str, str], zmq: bool) -> StackOptions:
    """`start-re-manager` options as a test passes them, in our stack's terms.

    Raises ValueError for an option we have no equivalent of: the test then fails saying so.
    """
    opts = StackOptions(zmq=zmq)
    key = env.get("QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER") or env.get("QSERVER_ZMQ_PRIVATE_KEY")
    if key:
        opts = _replace(opts, zmq_private_key=key)
    args = list(params)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        takes_value = name not in ("--verbose", "--quiet", "--silent")
        if not eq and takes_value and args and not args[0].startswith("--"):
            value = args.pop(0)
        if name.startswith(IGNORED_OPTIONS):
            continue
        if name in ("--zmq-addr", "--zmq-control-addr"):
            opts = _replace(opts, zmq_control=bind_address(value))
        elif name == "--zmq-info-addr":
            opts = _replace(opts, zmq_info=bind_address(value))
        elif name == "--zmq-encoding":
            if value != "0":
                opts = _replace(opts, zmq_encoding=value)
        elif name == "--zmq-publish-console":
            opts = _replace(opts, zmq_publish_console=value.upper() in ("ON", "TRUE", "1"))
        elif name == "--use-ipython-kernel":
            opts = _replace(opts, ipython_kernel=value.upper() in ("ON", "TRUE", "1"))
        elif name == "--user-group-permissions":
            opts = _replace(opts, permissions_file=value)
        else:
            raise ValueError(
                f"start-re-manager option {arg!r} has no equivalent in qserver's stack"
            )
    if not zmq:
        # Without the bridge its options change nothing: the same stack serves.
        opts = StackOptions(
            ipython_kernel=opts.ipython_kernel, permissions_file=opts.permissions_file
        )
    return opts


def _replace(opts: StackOptions, **kw: Any) -> StackOptions:
    return dataclasses.replace(opts, **kw)


# ----- the fixtures that replace the reference's -----


class Manager:
    """What `re_manager` yields: the stack that plays the manager."""

    def __init__(self, stack: RunningStack) -> None:
        self.stack = stack


@pytest.fixture
def re_manager(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Manager]:
    h = harness(request)
    opts = h.default_options()
    stack = h.fresh_manager(opts)
    h.point_zmq(monkeypatch, opts)
    yield Manager(stack)


@pytest.fixture
def re_manager_cmd(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Manager]]:
    h = harness(request)

    def create(params: list[str] | None = None, **_: Any) -> Manager:
        opts = parse_manager_options(params or [], dict(os.environ), h.zmq)
        stack = h.fresh_manager(opts)
        h.point_zmq(monkeypatch, opts)
        return Manager(stack)

    yield create


@pytest.fixture(scope="module")
def fastapi_server(request: pytest.FixtureRequest) -> Iterator[None]:
    harness(request).stack()
    yield


@pytest.fixture
def fastapi_server_fs(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., None]]:
    h = harness(request)

    def start(
        http_server_host: str = "localhost",
        http_server_port: int | str = REFERENCE_HTTP_PORT,
        api_key: str | None = API_KEY_FOR_TESTS,
    ) -> None:
        # Set by setup_server_with_config_file, as bluesky-httpserver reads it.
        config_file = os.environ.get("QSERVER_HTTP_SERVER_CONFIG")
        if config_file:
            # bluesky-httpserver's tests start with an empty database of logins, sessions and
            # keys: a new stack has an empty login bucket. (A login store of its own per case,
            # `--auth-store`, is a bucket the stack's gateway role may not use.)
            h.runner.stop()
            h.fresh_manager(h.stack().opts)
        stack = h.stack()
        default_port = int(http_server_port) == REFERENCE_HTTP_PORT
        if default_port and api_key == API_KEY_FOR_TESTS and not config_file:
            h.point_http(monkeypatch, h.http_default)
            return
        host = "127.0.0.1" if http_server_host == "localhost" else http_server_host
        port = free_port() if default_port else int(http_server_port)
        python = request.config.getoption("--qserver-python")
        gw = ExtraGateway(python, stack, host, port, key=api_key, config_file=config_file)
        h.gateways.append(gw)
        h.point_http(monkeypatch, f"http://localhost:{port}" if default_port else None)

    yield start
    h.stop_gateways()


def setup_server_with_config_file(*, config_file_str: str, tmpdir: Any, monkeypatch: Any) -> str:
    """bluesky-httpserver's config file, given to the gateway as bluesky-httpserver gets it.

    Its logins need a gateway that has them (ADR 23); without, the case is skipped.
    """
    config = yaml.safe_load(config_file_str) or {}
    if "authentication" in config and not _CURRENT.harness().runner.gateway_has_logins():
        pytest.skip(AUTH_SERVER_REASON)
    config_dir = Path(str(tmpdir)) / "config"
    config_dir.mkdir(parents=True)
    path = config_dir / "config_httpserver.yml"
    path.write_text(config_file_str)
    monkeypatch.setenv("QSERVER_HTTP_SERVER_CONFIG", str(path))
    monkeypatch.chdir(str(tmpdir))
    return str(path)


class IPKernelClient:
    """The reference's simple kernel client, given the connection info from our gateway."""

    def __init__(self, base: Any, http_url: Callable[[], str]) -> None:
        self._base = base
        self._http_url = http_url

    def start(self) -> None:
        from jupyter_client import BlockingKernelClient

        if self._base.ip_kernel_client:
            self._base.stop()
        r = httpx.get(
            f"{self._http_url()}/api/config/get",
            headers={"Authorization": f"ApiKey {API_KEY_FOR_TESTS}"},
            timeout=10.0,
        )
        r.raise_for_status()
        info = r.json()["config"]["ip_connect_info"]
        client = BlockingKernelClient()
        client.load_connection_info(info)
        client.start_channels()
        self._base.ip_kernel_client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


@pytest.fixture
def ip_kernel_simple_client(request: pytest.FixtureRequest) -> Iterator[IPKernelClient]:
    from bluesky_queueserver.manager.tests.common import IPKernelClient as RefClient

    h = harness(request)
    client = IPKernelClient(RefClient(), lambda: h.stack().http_url)
    yield client
    client.stop()


# ----- wiring -----


def _map_default_address(comm_base: Any, uri: str) -> None:
    """The reference's default address (http://localhost:60610) is this session's gateway.

    Tests that pass that address explicitly reach the stack, as they reach the reference's
    server there. (Test ids keep the literal address, so xdist workers agree on them.)
    """
    base = comm_base.ReManagerAPI_HTTP_Base
    original = base.__init__
    reference = f"http://localhost:{REFERENCE_HTTP_PORT}"

    def __init__(self: Any, *, http_server_uri: str | None = None, **kw: Any) -> None:
        if http_server_uri is not None and http_server_uri.rstrip("/") == reference:
            http_server_uri = uri
        original(self, http_server_uri=http_server_uri, **kw)

    base.__init__ = __init__
    comm_base.default_http_server_uri = uri


def _install_fixtures(http_port: int) -> None:
    """Put our fixtures where the test modules import theirs from, before they are imported."""
    import bluesky_queueserver.manager.tests.common as qs_common
    import bluesky_queueserver_api.comm_base as comm_base

    _map_default_address(comm_base, f"http://localhost:{http_port}")

    qs_common.re_manager = re_manager
    qs_common.re_manager_cmd = re_manager_cmd
    qs_common.ip_kernel_simple_client = ip_kernel_simple_client

    # bluesky-httpserver (not installed: its server is not ours to run) provides the rest.
    names = ("bluesky_httpserver", "bluesky_httpserver.tests", "bluesky_httpserver.tests.conftest")
    mods = [types.ModuleType(n) for n in names]
    mods[0].tests = mods[1]  # type: ignore[attr-defined]
    mods[1].conftest = mods[2]  # type: ignore[attr-defined]
    conftest = mods[2]
    conftest.API_KEY_FOR_TESTS = API_KEY_FOR_TESTS  # type: ignore[attr-defined]
    conftest.fastapi_server = fastapi_server  # type: ignore[attr-defined]
    conftest.fastapi_server_fs = fastapi_server_fs  # type: ignore[attr-defined]
    conftest.setup_server_with_config_file = setup_server_with_config_file  # type: ignore[attr-defined]
    for name, mod in zip(names, mods, strict=True):
        sys.modules[name] = mod


_HTTP_PORT = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    # The session's gateway port, fixed now: the test modules read the default address
    # when they are imported.
    config.stash[_HTTP_PORT] = free_port()
    _install_fixtures(config.stash[_HTTP_PORT])
    _CURRENT.config = config
    config.addinivalue_line("markers", "reftests_known(owner, cause): a known failure")


def pytest_unconfigure(config: pytest.Config) -> None:
    h = config.stash.get(_HARNESS, None)
    if h is not None:
        h.close()
        # The stacks' stores and logs; kept when asked (REFTESTS_KEEP=1), to read the logs.
        if os.environ.get("REFTESTS_KEEP", "") in ("", "0"):
            shutil.rmtree(h.runner.workdir, ignore_errors=True)
        else:
            print(f"\nreftests: stacks' data and logs kept in {h.runner.workdir}")


def _is_zmq_case(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("protocol") == "ZMQ":
        return True
    # test_comm.py's 0MQ tests (test_ReManagerComm_ZMQ_*).
    return "_ZMQ_" in item.name


def _load_expected(path: str | None) -> dict[str, tuple[str, str]]:
    if not path:
        return {}
    out = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        nodeid, owner, cause = (part.strip() for part in line.split("|", 2))
        out[nodeid] = (owner, cause)
    return out


# The cases that talk to a server (the others test the client alone).
_SERVER_CASES: set[str] = set()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    zmq = bool(config.getoption("--reftests-zmq"))
    expected = _load_expected(config.getoption("--reftests-expected"))
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            _SERVER_CASES.add(item.nodeid)
        if not zmq and _is_zmq_case(item):
            item.add_marker(pytest.mark.skip(reason=ZMQ_OFF_REASON))
            continue
        reason = SKIPS.get(item.name.split("[")[0])
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
            continue
        known = expected.get(_short_id(item.nodeid))
        if known is not None:
            owner, cause = known
            # A cause marked "(flaky)" fails only at times: passing does not fail the run.
            strict = "(flaky)" not in cause
            item.add_marker(pytest.mark.xfail(reason=f"[{owner}] {cause}", strict=strict))


def _short_id(nodeid: str) -> str:
    """`test_api.py::test_x[HTTP-THREADS]`, wherever the package was collected from."""
    path, sep, rest = nodeid.partition("::")
    return path.rsplit("/", 1)[-1] + sep + rest


@pytest.fixture(autouse=True)
def _reftests_fixed_ports(request: pytest.FixtureRequest) -> Iterator[None]:
    """A case on the reference's fixed ports runs alone, and leaves them free at its end."""
    if request.node.name.split("[")[0] not in FIXED_PORTS:
        yield
        return
    with open(FIXED_PORTS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the kernel drops it if this process dies
        try:
            yield
        finally:
            # Its stack (and the bridge on the fixed ports) goes before the next case's.
            harness(request).runner.stop()


@pytest.fixture(autouse=True)
def _reftests_addresses(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default addresses of this test: the stack where it asked for a server, else closed."""
    h = harness(request)
    names = request.fixturenames
    h.point_http(monkeypatch, h.http_default if "fastapi_server" in names else None)
    h.point_zmq(monkeypatch, h.default_options() if "re_manager" in names else None)


# Where each stack log file stood when the running case began (path -> size in bytes).
_LOG_MARKS = pytest.StashKey[dict[Path, int]]()
# At most this many of a log's last lines, of those written during a failed case.
LOG_LINES_ON_FAILURE = 60


def _stack_logs(workdir: Path) -> list[Path]:
    """Every service's log of every stack of this session (a case may start a new stack)."""
    return sorted(workdir.glob("stack-*/logs/*.log"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid not in _SERVER_CASES:
        return
    workdir = _harness_of(item.config).runner.workdir
    marks = {}
    for log in _stack_logs(workdir):
        with contextlib.suppress(OSError):
            marks[log] = log.stat().st_size
    item.stash[_LOG_MARKS] = marks


def _logs_since(workdir: Path, marks: dict[Path, int]) -> str:
    """What the stacks' services logged since `marks`: the last lines of each log."""
    parts = []
    for log in _stack_logs(workdir):
        try:
            with open(log, "rb") as f:
                f.seek(marks.get(log, 0))
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        lines = text.splitlines()
        if not lines:
            continue
        cut = len(lines) - LOG_LINES_ON_FAILURE
        head = f"---- {log.parent.parent.name}/{log.name}"
        if cut > 0:
            head += f" (its last {LOG_LINES_ON_FAILURE} of {len(lines)} lines)"
            lines = lines[cut:]
        parts.append("\n".join([head, *lines]))
    return "\n".join(parts) or "(nothing was logged during the case)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed case's report carries what the stack's services logged while it ran: a
    failure seen once on a loaded machine can be read without running it again."""
    report = yield
    marks = item.stash.get(_LOG_MARKS, None)
    if report.failed and marks is not None and call.when in ("setup", "call"):
        workdir = _harness_of(item.config).runner.workdir
        report.sections.append(("stack logs during the case", _logs_since(workdir, marks)))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = getattr(pytest_runtest_logreport, "path", None)
    if path is None:
        return
    if report.when != "call" and not (report.failed or report.skipped):
        return
    message = ""
    if report.failed or report.skipped:
        crash = getattr(report.longrepr, "reprcrash", None)
        if crash is not None:
            message = crash.message
        elif isinstance(report.longrepr, tuple):
            message = str(report.longrepr[2])
        else:
            message = str(report.longrepr)[-2000:]
    outcome = report.outcome
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
    elif report.failed and str(report.longrepr).startswith("[XPASS(strict)]"):
        outcome = "xpassed"  # a known failure that passes now: prune_expected.py drops it
    line = {
        "nodeid": _short_id(report.nodeid),
        "server": report.nodeid in _SERVER_CASES,
        "when": report.when,
        "outcome": outcome,
        "duration": round(report.duration, 2),
        "message": message[:4000],
        "time": time.time(),
        "worker": os.environ.get("PYTEST_XDIST_WORKER", ""),
    }
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """The report is written where the cases run: by the process, or by each xdist worker."""
    config = session.config
    path = config.getoption("--reftests-report")
    if not path:
        return
    worker = hasattr(config, "workerinput")
    if not worker:
        Path(path).write_text("")
    if worker or not config.pluginmanager.hasplugin("dsession"):
        pytest_runtest_logreport.path = path  # type: ignore[attr-defined]
