"""One typed configuration tree for every service: a YAML file, `QSERVER_*` variables, flags.

Precedence, lowest first: the YAML file (`--config FILE` or `$QSERVER_CONFIG`), then the
environment's `QSERVER_*` variables, then command-line flags. Each key of the tree has one
environment variable (the table `ENV` below); the file's values are given to a service as
defaults of those variables, so every service reads its settings one way.

A file with an unknown key or a value of the wrong type is refused, naming the key and what
was expected; so is a `QSERVER_*` variable whose value does not fit its key.

`python -m qserver.config --schema` prints the JSON schema (committed as
`docs/config.schema.json`); `python -m qserver.config FILE` checks a file and prints the
variables it sets.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

# Re-exported: every command line takes these from here.
from qserver.configargs import CONFIG_ENV as CONFIG_ENV
from qserver.configargs import ConfigError as ConfigError
from qserver.configargs import add_argument as add_argument
from qserver.configargs import config_path as config_path
from qserver.configargs import switch as switch

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "docs" / "config.schema.json"


def _d(text: str) -> Meta:
    return Meta(description=text)


class Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


class NatsSection(Section):
    url: Annotated[str | None, _d("NATS server(s), comma-separated")] = None
    prefix: Annotated[str | None, _d("subject prefix of this queue server")] = None
    replicas: Annotated[Annotated[int, Meta(ge=1, le=5)] | None, _d("JetStream replicas")] = None
    user: Annotated[str | None, _d("NATS user")] = None
    password: Annotated[str | None, _d("NATS password")] = None
    token: Annotated[str | None, _d("NATS token")] = None
    creds: Annotated[str | None, _d("NATS credentials file")] = None
    nkey: Annotated[str | None, _d("NATS nkey seed file")] = None
    tls_ca: Annotated[str | None, _d("CA certificate file")] = None
    tls_cert: Annotated[str | None, _d("client certificate file")] = None
    tls_key: Annotated[str | None, _d("client key file")] = None
    inbox_prefix: Annotated[str | None, _d("reply inboxes: _INBOX.<user> by default")] = None
    live_documents: Annotated[bool | None, _d("documents on <prefix>.docs.<name>")] = None


class LogSection(Section):
    level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None, _d("log level")
    ] = None
    format: Annotated[Literal["text", "json"] | None, _d("log line format")] = None


class KafkaSection(Section):
    bootstrap: Annotated[str | None, _d("bootstrap servers; empty = off")] = None
    beamline: Annotated[
        str | None, _d("names the topic <beamline>.bluesky.runengine.documents")
    ] = None
    topic: Annotated[str | None, _d("the document topic (overrides beamline)")] = None
    producer_config: Annotated[
        dict[str, Any] | None, _d("extra confluent-kafka producer options")
    ] = None


class DocumentsSection(Section):
    stream: Annotated[
        bool | None, _d("documents into the document stream (off: no catalog, no Kafka export)")
    ] = None
    max_age_days: Annotated[
        Annotated[float, Meta(gt=0)] | None, _d("the stream keeps documents this long")
    ] = None
    max_gib: Annotated[
        Annotated[float, Meta(gt=0)] | None, _d("the stream keeps at most this many GiB (reserved)")
    ] = None
    max_doc_mib: Annotated[
        Annotated[float, Meta(gt=0)] | None, _d("larger documents are refused and counted")
    ] = None


class ConsoleSection(Section):
    max_msgs: Annotated[
        Annotated[int, Meta(gt=0)] | None, _d("the console stream keeps at most this many messages")
    ] = None
    max_mib: Annotated[
        Annotated[float, Meta(gt=0)] | None, _d("the console stream keeps at most this many MiB")
    ] = None
    max_age_days: Annotated[
        Annotated[float, Meta(gt=0)] | None, _d("the console stream keeps messages this long")
    ] = None


class TiledSection(Section):
    url: Annotated[str | None, _d("Tiled server the runs are saved to; empty = off")] = None
    api_key: Annotated[str | None, _d("its API key")] = None
    catalog: Annotated[str | None, _d("the container of runs")] = None
    close_streams: Annotated[
        bool | None,
        _d("tell the server when a run's writes end (off only for a server with no live streams)"),
    ] = None


class QueueSection(Section):
    instance: Annotated[str | None, _d("this instance's name in the leader lease")] = None
    existing_lists: Annotated[str | None, _d("plans and devices file (JSON)")] = None
    permissions: Annotated[str | None, _d("user group permissions file (YAML)")] = None
    emergency_lock_key: Annotated[str | None, _d("unlocks any lock")] = None


class WorkerSection(Section):
    orphan_timeout: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        _d("seconds an idle environment with no worker service waits, then closes itself"),
    ] = None
    use_ipython_kernel: Annotated[
        bool | None, _d("run the environment in an IPython kernel (jupyter console attaches)")
    ] = None
    ipython_dir: Annotated[
        str | None, _d("where the kernel's connection file (0600) and IPython files go")
    ] = None
    permitted_re_metadata_keys: Annotated[
        list[str] | None,
        _d("the RE.md keys `re_metadata` shows, as paths: /key, /key/subkey; / is all"),
    ] = None
    task_results_keep_s: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        _d("seconds the result of a finished task (function, script) is kept"),
    ] = None


class HttpSection(Section):
    host: Annotated[str | None, _d("gateway address")] = None
    port: Annotated[Annotated[int, Meta(ge=0, le=65535)] | None, _d("gateway port")] = None
    timeout: Annotated[Annotated[float, Meta(gt=0)] | None, _d("seconds to wait for a service")] = (
        None
    )
    idle_timeout: Annotated[
        Annotated[float, Meta(gt=0)] | None, _d("seconds a connection may idle between requests")
    ] = None
    request_timeout: Annotated[
        Annotated[float, Meta(gt=0)] | None,
        _d("seconds a client has to send a request or take an answer"),
    ] = None
    ws_ping_interval: Annotated[
        Annotated[float, Meta(gt=0)] | None, _d("seconds between WebSocket pings (and pong wait)")
    ] = None
    config: Annotated[str | None, _d("API keys, roles, anonymous access (YAML)")] = None
    single_user_api_key: Annotated[str | None, _d("the single-user key")] = None
    custom_modules: Annotated[
        list[str] | None,
        _d("modules whose spreadsheet_to_plan_list converts uploaded spreadsheets"),
    ] = None


class ZmqSection(Section):
    control_addr: Annotated[str | None, _d("0MQ control socket, tcp://host:port")] = None
    info_addr: Annotated[str | None, _d("0MQ console/status PUB socket, tcp://host:port")] = None
    private_key: Annotated[str | None, _d("CurveZMQ private key (z85); unset: no encryption")] = (
        None
    )
    encoding: Annotated[Literal["json", "msgpack"] | None, _d("0MQ message encoding")] = None
    publish_console: Annotated[bool | None, _d("publish console output and status")] = None
    client_keys: Annotated[str | None, _d("CurveZMQ client public keys mapped to users (YAML)")] = (
        None
    )
    local_users: Annotated[
        Literal["owner", "any"] | None, _d("loopback clients: this OS user (and root), or any")
    ] = None
    info_public: Annotated[bool | None, _d("allow a non-loopback info address")] = None
    timeout: Annotated[Annotated[float, Meta(gt=0)] | None, _d("seconds to wait for a service")] = (
        None
    )


class Config(Section):
    """The whole tree; every key is optional (a service's own default applies)."""

    nats: NatsSection = msgspec.field(default_factory=NatsSection)
    log: LogSection = msgspec.field(default_factory=LogSection)
    kafka: KafkaSection = msgspec.field(default_factory=KafkaSection)
    documents: DocumentsSection = msgspec.field(default_factory=DocumentsSection)
    console: ConsoleSection = msgspec.field(default_factory=ConsoleSection)
    tiled: TiledSection = msgspec.field(default_factory=TiledSection)
    queue: QueueSection = msgspec.field(default_factory=QueueSection)
    worker: WorkerSection = msgspec.field(default_factory=WorkerSection)
    http: HttpSection = msgspec.field(default_factory=HttpSection)
    zmq: ZmqSection = msgspec.field(default_factory=ZmqSection)


# Each key and its environment variable: the names the services read.
ENV: dict[tuple[str, str], str] = {
    ("nats", "url"): "QSERVER_NATS_URL",
    ("nats", "prefix"): "QSERVER_PREFIX",
    ("nats", "replicas"): "QSERVER_JS_REPLICAS",
    ("nats", "user"): "QSERVER_NATS_USER",
    ("nats", "password"): "QSERVER_NATS_PASSWORD",
    ("nats", "token"): "QSERVER_NATS_TOKEN",
    ("nats", "creds"): "QSERVER_NATS_CREDS",
    ("nats", "nkey"): "QSERVER_NATS_NKEY",
    ("nats", "tls_ca"): "QSERVER_NATS_TLS_CA",
    ("nats", "tls_cert"): "QSERVER_NATS_TLS_CERT",
    ("nats", "tls_key"): "QSERVER_NATS_TLS_KEY",
    ("nats", "inbox_prefix"): "QSERVER_NATS_INBOX_PREFIX",
    ("nats", "live_documents"): "QSERVER_NATS_DOCS",
    ("log", "level"): "QSERVER_LOG_LEVEL",
    ("log", "format"): "QSERVER_LOG_FORMAT",
    ("kafka", "bootstrap"): "QSERVER_KAFKA_BOOTSTRAP",
    ("kafka", "beamline"): "QSERVER_BEAMLINE",
    ("kafka", "topic"): "QSERVER_KAFKA_TOPIC",
    ("kafka", "producer_config"): "QSERVER_KAFKA_PRODUCER_CONFIG",
    ("documents", "stream"): "QSERVER_DOCS_STREAM",
    ("documents", "max_age_days"): "QSERVER_DOCS_MAX_AGE_DAYS",
    ("documents", "max_gib"): "QSERVER_DOCS_MAX_GIB",
    ("documents", "max_doc_mib"): "QSERVER_DOCS_MAX_DOC_MIB",
    ("console", "max_msgs"): "QSERVER_CONSOLE_MAX_MSGS",
    ("console", "max_mib"): "QSERVER_CONSOLE_MAX_MIB",
    ("console", "max_age_days"): "QSERVER_CONSOLE_MAX_AGE_DAYS",
    ("tiled", "url"): "QSERVER_TILED_URL",
    ("tiled", "api_key"): "QSERVER_TILED_API_KEY",
    ("tiled", "catalog"): "QSERVER_TILED_CATALOG",
    ("tiled", "close_streams"): "QSERVER_TILED_CLOSE_STREAMS",
    ("queue", "instance"): "QSERVER_INSTANCE",
    ("queue", "existing_lists"): "QSERVER_EXISTING_LISTS",
    ("queue", "permissions"): "QSERVER_PERMISSIONS",
    ("queue", "emergency_lock_key"): "QSERVER_EMERGENCY_LOCK_KEY_FOR_SERVER",
    ("worker", "orphan_timeout"): "QSERVER_ENV_ORPHAN_TIMEOUT",
    ("worker", "use_ipython_kernel"): "QSERVER_USE_IPYTHON_KERNEL",
    ("worker", "ipython_dir"): "QSERVER_IPYTHON_DIR",
    ("worker", "permitted_re_metadata_keys"): "QSERVER_PERMITTED_RE_METADATA_KEYS",
    ("worker", "task_results_keep_s"): "QSERVER_TASK_RESULTS_KEEP_S",
    ("http", "host"): "QSERVER_HTTP_HOST",
    ("http", "port"): "QSERVER_HTTP_PORT",
    ("http", "timeout"): "QSERVER_HTTP_TIMEOUT",
    ("http", "idle_timeout"): "QSERVER_HTTP_IDLE_TIMEOUT",
    ("http", "request_timeout"): "QSERVER_HTTP_REQUEST_TIMEOUT",
    ("http", "ws_ping_interval"): "QSERVER_HTTP_WS_PING_INTERVAL",
    ("http", "config"): "QSERVER_HTTP_CONFIG",
    ("http", "single_user_api_key"): "QSERVER_HTTP_SERVER_SINGLE_USER_API_KEY",
    ("http", "custom_modules"): "QSERVER_CUSTOM_MODULES",
    # The 0MQ bridge: the reference manager's names where it has them.
    ("zmq", "control_addr"): "QSERVER_ZMQ_CONTROL_ADDRESS_FOR_SERVER",
    ("zmq", "info_addr"): "QSERVER_ZMQ_INFO_ADDRESS_FOR_SERVER",
    ("zmq", "private_key"): "QSERVER_ZMQ_PRIVATE_KEY_FOR_SERVER",
    ("zmq", "encoding"): "QSERVER_ZMQ_ENCODING_FOR_SERVER",
    ("zmq", "publish_console"): "QSERVER_ZMQ_PUBLISH_CONSOLE",
    ("zmq", "client_keys"): "QSERVER_ZMQ_CLIENT_KEYS",
    ("zmq", "local_users"): "QSERVER_ZMQ_LOCAL_USERS",
    ("zmq", "info_public"): "QSERVER_ZMQ_INFO_PUBLIC",
    ("zmq", "timeout"): "QSERVER_ZMQ_TIMEOUT",
}
# Lists are given to the variables as the reference's do: items joined by a colon.
LIST_VARS = {"QSERVER_PERMITTED_RE_METADATA_KEYS": ":", "QSERVER_CUSTOM_MODULES": ":|,"}
BOOLEAN_VARS = (
    "QSERVER_NATS_DOCS",
    "QSERVER_DOCS_STREAM",
    "QSERVER_ZMQ_PUBLISH_CONSOLE",
    "QSERVER_ZMQ_INFO_PUBLIC",
    "QSERVER_TILED_CLOSE_STREAMS",
)


def _fail(err: msgspec.ValidationError | msgspec.DecodeError, where: str) -> ConfigError:
    # msgspec says e.g. "Expected `int`, got `str` - at `$.nats.replicas`".
    text = str(err).replace("`$.", "`")
    return ConfigError(f"{where}: {text}")


def load_file(path: str | Path) -> Config:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror or e}") from None
    try:
        return msgspec.yaml.decode(data or b"{}", type=Config)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise _fail(e, f"config file {path}") from None


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list):
        return ":".join(str(v) for v in value)
    return str(value)


OFF_WORDS = ("0", "false", "off", "no")


def env_flag(var: str, environ: Mapping[str, str] = os.environ) -> bool:
    """A boolean variable of `BOOLEAN_VARS` (on unless set to one of `OFF_WORDS`)."""
    return environ.get(var, "1").lower() not in OFF_WORDS


def _env_value(var: str, text: str) -> Any:
    if var == "QSERVER_KAFKA_PRODUCER_CONFIG":
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise ConfigError(f"{var} must be a JSON object, not {text!r}") from None
    if var in LIST_VARS:
        return [v.strip() for v in re.split(LIST_VARS[var], text) if v.strip()]
    if var in BOOLEAN_VARS:
        return text.lower() not in OFF_WORDS
    if var == "QSERVER_USE_IPYTHON_KERNEL":
        try:
            return switch(text)
        except ValueError as e:
            raise ConfigError(f"{var}: {e}") from None
    return text


def from_environ(environ: Mapping[str, str]) -> Config:
    """The tree as the `QSERVER_*` variables set it, checked against the types."""
    tree: dict[str, dict[str, Any]] = {}
    for (section, key), var in ENV.items():
        if environ.get(var, "") != "":
            tree.setdefault(section, {})[key] = _env_value(var, environ[var])
    try:
        return msgspec.convert(tree, Config, strict=False)
    except msgspec.ValidationError as e:
        err = _fail(e, "environment")
        for (section, key), var in ENV.items():
            if f"`{section}.{key}`" in str(err):
                raise ConfigError(f"{err} (from ${var})") from None
        raise err from None


def as_environ(cfg: Config) -> dict[str, str]:
    """The variables that `cfg` sets."""
    out = {}
    for (section, key), var in ENV.items():
        value = getattr(getattr(cfg, section), key)
        if value is not None:
            out[var] = _env_text(value)
    return out


def apply(environ: MutableMapping[str, str], path: str | Path | None) -> Config:
    """Give the file's values to `environ` where it has none; check both; the merged tree."""
    if path:
        for var, value in as_environ(load_file(path)).items():
            environ.setdefault(var, value)
    return from_environ(environ)


def bootstrap(argv: list[str] | None = None) -> None:
    """Load the configuration into this process's environment, before flags are parsed.

    Exits with a message naming the key on a bad file or variable.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        apply(os.environ, config_path(argv, os.environ))
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def schema() -> dict[str, Any]:
    return msgspec.json.schema(Config)  # type: ignore[no-any-return]


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m qserver.config", description=__doc__)
    p.add_argument("file", nargs="?", help="a configuration file to check")
    p.add_argument("--schema", action="store_true", help="print the JSON schema")
    args = p.parse_args(argv)
    if args.schema:
        print(schema_text(), end="")
        return 0
    try:
        cfg = load_file(args.file) if args.file else from_environ(os.environ)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return 2
    for var, value in sorted(as_environ(cfg).items()):
        shown = "****" if any(w in var for w in ("PASSWORD", "TOKEN", "KEY")) else value
        print(f"{var}={shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
