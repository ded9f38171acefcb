"""The configuration tree: file, environment and flags, the schema and the docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qserver import config
from qserver.config import ENV, Config, ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qserver.yml"
    path.write_text(text)
    return path


def test_the_committed_schema_is_current() -> None:
    committed = config.SCHEMA_FILE.read_text()
    assert committed == config.schema_text(), (
        "docs/config.schema.json is stale: python -m qserver.config --schema "
        "> docs/config.schema.json"
    )


def test_every_key_has_a_variable_that_the_code_reads() -> None:
    keys = {
        (section, key)
        for section, struct in Config.__annotations__.items()
        for key in getattr(Config(), section).__struct_fields__
    }
    assert keys == set(ENV)
    source = "\n".join(
        p.read_text()
        for d in ("qserver", "services")
        for p in (ROOT / d).rglob("*.py")
        if p.name != "config.py"
    )
    unread = [var for var in ENV.values() if var not in source]
    assert not unread, f"variables no service reads: {unread}"


def test_every_key_and_variable_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        f"{s}.{k} / {var}"
        for (s, k), var in ENV.items()
        if f"`{s}.{k}`" not in doc or f"`{var}`" not in doc
    ]
    assert not missing, f"docs/configuration.md does not document: {missing}"


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "nats:\n  prefix: qs.file\n  replicas: 3\nlog:\n  format: json\n"
        "kafka:\n  producer_config: {linger.ms: 1}\n",
    )
    environ = {"QSERVER_PREFIX": "qs.env"}
    cfg = config.apply(environ, path)
    assert environ["QSERVER_PREFIX"] == "qs.env"  # the environment wins over the file
    assert environ["QSERVER_JS_REPLICAS"] == "3"
    assert environ["QSERVER_LOG_FORMAT"] == "json"
    assert environ["QSERVER_KAFKA_PRODUCER_CONFIG"] == '{"linger.ms": 1}'
    assert (cfg.nats.prefix, cfg.nats.replicas, cfg.kafka.producer_config) == (
        "qs.env",
        3,
        {"linger.ms": 1},
    )
    argv = ["--prefix", "qs.flag", "--config", str(path)]
    assert config.config_path(argv, {}) == str(path)
    assert config.config_path([f"--config={path}"], {}) == str(path)
    assert config.config_path([], {"QSERVER_CONFIG": "x.yml"}) == "x.yml"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nats:\n  port: 4222\n", "unknown field `port` - at `nats`"),
        ("nats:\n  replicas: three\n", "Expected `int | null`, got `str` - at `nats.replicas`"),
        ("nats:\n  replicas: 7\n", "<= 5 - at `nats.replicas`"),
        ("log:\n  format: xml\n", "at `log.format`"),
        ("http: [1]\n", "Expected `object`, got `array` - at `http`"),
        ("kafak:\n  bootstrap: x\n", "unknown field `kafak`"),
    ],
)
def test_a_bad_file_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.load_file(write(tmp_path, text))


def test_a_bad_variable_names_the_key_and_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"at `http.port` \(from \$QSERVER_HTTP_PORT\)"):
        config.from_environ({"QSERVER_HTTP_PORT": "eighty"})
    with pytest.raises(ConfigError, match="QSERVER_KAFKA_PRODUCER_CONFIG must be a JSON object"):
        config.from_environ({"QSERVER_KAFKA_PRODUCER_CONFIG": "{nope"})


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        config.load_file(tmp_path / "absent.yml")
