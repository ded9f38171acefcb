"""docker-compose.yml agrees with the code: commands, env vars, ports, health, the NATS cluster.

No Docker engine runs here, so the file is read, not started.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from qserver.client import DEFAULT_NATS_URL
from qserver.doctor import MICRO_SERVICES
from services.gateway.__main__ import DEFAULT_PORT as GATEWAY_PORT
from services.stack.nats_permissions import env_reference, roles
from services.stack.natsserver import find_binary, port_from_url

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
NATS_NODES = sorted(n for n in SERVICES if n.startswith("nats-"))
RESTART_POLICIES = {"always", "unless-stopped", "on-failure"}


def is_tool(svc: dict[str, Any]) -> bool:
    """Run by hand (`docker compose run`), not kept up."""
    return "tools" in svc.get("profiles", [])


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, please"
    return {k: str(v) for k, v in env.items()}


def qserver_vars_in_code() -> set[str]:
    found: set[str] = set()
    for top in ("qserver", "services"):
        for path in (ROOT / top).rglob("*.py"):
            found.update(re.findall(r"QSERVER_[A-Z0-9_]+", path.read_text()))
    return found


def example_env() -> dict[str, str]:
    lines = (ROOT / "deploy" / "example.env").read_text().splitlines()
    pairs = (ln.split("=", 1) for ln in lines if ln.strip() and not ln.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_the_expected_containers_are_there() -> None:
    expected = {"kafka", "tiled", "queue-a", "queue-b", "history", "worker"}
    assert expected | {"gateway-a", "gateway-b"} <= set(SERVICES)
    assert NATS_NODES == ["nats-1", "nats-2", "nats-3"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_container_has_a_healthcheck_and_a_restart_policy(name: str) -> None:
    svc = SERVICES[name]
    if is_tool(svc):
        assert svc["restart"] == "no"
        return
    assert svc.get("restart") in RESTART_POLICIES, name
    check = svc.get("healthcheck") or {}
    assert check.get("test") and not check.get("disable"), name


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if s.get("build")))
def test_project_commands_are_real_entry_points(name: str) -> None:
    command = SERVICES[name]["command"]
    if command[:2] == ["python", "-m"]:
        module = command[2]
        assert importlib.util.find_spec(module) is not None, module
        if module == "services.stack.tiled_serve":  # `tiled serve config CONFIG`, ours
            assert (ROOT / "deploy" / "tiled" / Path(command[3]).name).exists()
        elif module.startswith("services."):
            assert importlib.util.find_spec(f"{module}.__main__") is not None, module
    else:
        assert command[0] == "qserver", command  # the CLI entry point of pyproject.toml
        assert 'qserver = "qserver.cli:main"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if s.get("build")))
def test_healthchecks_name_a_service_the_check_knows(name: str) -> None:
    test = SERVICES[name].get("healthcheck", {}).get("test", [])
    if "qserver.healthcheck" in test:
        assert test[-1] in (*MICRO_SERVICES, "gateway")
        assert test[-1] in SERVICES[name]["command"][-1]  # checks itself


def test_every_qserver_env_var_is_read_by_the_code() -> None:
    in_code = qserver_vars_in_code()
    used = {k for svc in SERVICES.values() for k in env_of(svc) if k.startswith("QSERVER_")}
    used |= {k for k in example_env() if k.startswith("QSERVER_")}
    assert used, "no QSERVER_ variables in the compose file?"
    assert used <= in_code, f"not read anywhere in qserver/ or services/: {used - in_code}"


def test_every_interpolated_variable_is_in_the_example_env() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    assert referenced <= set(example_env()), referenced - set(example_env())


def test_ports_match_the_code_defaults() -> None:
    for name in ("gateway-a", "gateway-b"):
        env = env_of(SERVICES[name])
        assert int(env["QSERVER_HTTP_PORT"]) == GATEWAY_PORT
        assert all(p.endswith(f":{GATEWAY_PORT}") for p in SERVICES[name]["ports"])
    nats_port = port_from_url(DEFAULT_NATS_URL)
    assert nats_port == 4222
    for node in NATS_NODES:
        assert all(p.endswith(f":{nats_port}") for p in SERVICES[node]["ports"])
    conf = (ROOT / "deploy" / "nats" / "nats.conf").read_text()
    assert re.search(rf"^port: {nats_port}$", conf, re.M)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_nats_nodes_form_one_cluster_with_routes_to_each_other() -> None:
    names, volumes = set(), set()
    for node in NATS_NODES:
        cmd = SERVICES[node]["command"]
        assert flag(cmd, "--cluster_name") == "qserver"
        assert flag(cmd, "--cluster") == "nats://0.0.0.0:6222"
        routes = {r.split("//")[1].split(":")[0] for r in flag(cmd, "--routes").split(",")}
        assert routes == set(NATS_NODES) - {node}, node
        names.add(flag(cmd, "--name"))
        data = [v for v in SERVICES[node]["volumes"] if v.endswith(":/data")]
        assert len(data) == 1, node
        volumes.add(data[0].split(":")[0])
    assert names == set(NATS_NODES)
    assert len(volumes) == 3, "each node needs its own volume"
    assert "store_dir: /data" in (ROOT / "deploy" / "nats" / "nats.conf").read_text()


def test_services_reach_every_nats_node() -> None:
    for name, svc in SERVICES.items():
        url = env_of(svc).get("QSERVER_NATS_URL")
        if url is not None:
            hosts = {u.split("//")[1].split(":")[0] for u in url.split(",")}
            assert hosts == set(NATS_NODES), name


def test_named_volumes_are_declared() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    for name, svc in SERVICES.items():
        for v in svc.get("volumes", []):
            source = v.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, (name, source)
    assert {"kafka-data", "tiled-data"} <= declared


def test_services_connect_as_users_of_the_nats_config() -> None:
    known = {r.name for r in roles()}
    nats_env = env_of(SERVICES["nats-1"])
    for name, svc in SERVICES.items():
        user = env_of(svc).get("QSERVER_NATS_USER")
        if user is None:
            continue
        assert user in known, (name, user)
        # The service's password is the one nats-server has for that user.
        password = env_of(svc)["QSERVER_NATS_PASSWORD"]
        var = env_reference(user).lstrip("$")
        assert password.startswith("${" + var), (name, password)
        assert var in nats_env
    accounts = (ROOT / "deploy" / "nats" / "accounts.conf").read_text()
    for role in known:
        assert env_reference(role) in accounts


def test_example_env_holds_placeholders_only() -> None:
    secrets = {k: v for k, v in example_env().items() if "PASSWORD" in k or "KEY" in k}
    assert secrets
    assert all(v.startswith("CHANGE-ME") for v in secrets.values()), secrets
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_replicas_share_the_prefix_and_have_names_of_their_own() -> None:
    for a, b in (("queue-a", "queue-b"), ("gateway-a", "gateway-b")):
        env_a, env_b = env_of(SERVICES[a]), env_of(SERVICES[b])
        assert SERVICES[a]["command"] == SERVICES[b]["command"]
        assert env_a["QSERVER_PREFIX"] == env_b["QSERVER_PREFIX"]
    assert env_of(SERVICES["queue-a"])["QSERVER_INSTANCE"] == "queue-a"
    assert env_of(SERVICES["queue-b"])["QSERVER_INSTANCE"] == "queue-b"
    assert env_of(SERVICES["queue-a"])["QSERVER_JS_REPLICAS"] == str(len(NATS_NODES))


def test_tiled_config_is_valid_for_tiled_and_holds_no_key() -> None:
    from tiled.config import parse_configs

    config = parse_configs(ROOT / "deploy" / "tiled" / "config.yml")
    assert config.authentication.single_user_api_key is None  # from the environment only
    assert "TILED_SINGLE_USER_API_KEY" in env_of(SERVICES["tiled"])


def test_nats_config_is_valid_for_nats_server_with_each_node_command() -> None:
    env = {**os.environ, **{env_reference(r.name).lstrip("$"): "x" for r in roles()}}
    for node in NATS_NODES:
        cmd = SERVICES[node]["command"]
        cmd = [str(ROOT / "deploy" / "nats" / "nats.conf") if a.startswith("/etc/nats/") else a
               for a in cmd]  # fmt: skip
        done = subprocess.run(
            [find_binary(), *cmd, "-t"], env=env, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "is valid" in done.stdout + done.stderr


def test_dockerfile_copies_what_pip_install_needs() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    copied = {
        part.rstrip("/").removeprefix("./")
        for line in text.splitlines()
        if line.startswith("COPY ")
        for part in line.split()[1:-1]
    }
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r"include = \[([^]]*)\]", pyproject)
    assert packages is not None
    for pattern in re.findall(r'"([^"]+)"', packages.group(1)):
        assert pattern.rstrip("*") in copied, pattern
    assert {"pyproject.toml", "README.md"} <= copied  # the readme is part of the metadata
    assert "pip install ." in text
    for name, svc in SERVICES.items():
        if svc.get("build"):
            assert svc["build"] == ".", name
