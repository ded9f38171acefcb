"""`qserver login`: tokens from a gateway's login providers, cached per user (mode 0600).

One file per gateway (`<config dir>/logins/<host>_<port>.json`) in a directory only its
owner can read: a refresh token is a password for as long as its session lasts.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import platformdirs

URI_ENV = "QSERVER_HTTP_SERVER_URI"  # the name bluesky-queueserver-api reads
DEFAULT_URI = "http://localhost:60610"
EXPIRED = "Access token has expired"
TIMEOUT_S = 30.0


class LoginError(Exception):
    """A login, refresh or logout the gateway refused (the message is its answer)."""


class GatewayUnreachable(LoginError):
    """Nothing answers at the gateway's address."""


@dataclass(frozen=True)
class Login:
    url: str
    provider: str
    username: str
    access_token: str
    refresh_token: str


def logins_dir() -> Path:
    return Path(platformdirs.user_config_dir("qserver")) / "logins"


def cache_file(url: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    name = (
        f"{parts.hostname or 'localhost'}_{parts.port or (443 if parts.scheme == 'https' else 80)}"
    )
    return logins_dir() / f"{name}.json"


def save(login: Login) -> Path:
    """Write the login, readable by this user only (directory 0700, file 0600)."""
    path = cache_file(login.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(login), f)
    os.replace(tmp, path)
    return path


def load(url: str) -> Login | None:
    path = cache_file(url)
    try:
        data = json.loads(path.read_text())
        return Login(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        raise LoginError(
            f"the cached login {path} is damaged ({e}): run `qserver logout`"
        ) from None


def forget(url: str) -> bool:
    path = cache_file(url)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def _call(method: str, url: str, path: str, **kwargs: Any) -> Any:
    import httpx

    try:
        r = httpx.request(method, url.rstrip("/") + path, timeout=TIMEOUT_S, **kwargs)
    except httpx.TransportError as e:
        raise GatewayUnreachable(f"no gateway answers at {url}: {e}") from None
    try:
        body = r.json()
    except ValueError:
        body = {"detail": r.text[:200]}
    if r.status_code >= 400:
        detail = body.get("detail", body) if isinstance(body, dict) else body
        raise LoginError(f"{r.status_code}: {detail}")
    return body


def password_provider(url: str) -> str:
    """The gateway's first password provider (what `login` uses unless told)."""
    listed = _call("GET", url, "/api/auth/providers")["providers"]
    names = [p["provider"] for p in listed if p["mode"] == "password"]
    if not names:
        raise LoginError(f"the gateway at {url} has no password login provider")
    return str(names[0])


def login(url: str, username: str, password: str, provider: str | None = None) -> Login:
    provider = provider or password_provider(url)
    tokens = _call(
        "POST",
        url,
        f"/api/auth/provider/{provider}/token",
        data={"username": username, "password": password},
    )
    done = Login(url, provider, username, tokens["access_token"], tokens["refresh_token"])
    save(done)
    return done


def authorized(url: str, method: str, path: str) -> Any:
    """A request with the cached login's token, refreshed (and saved) once if it expired."""
    cached = load(url)
    if cached is None:
        raise LoginError(f"not logged in to {url}: run `qserver login`")
    try:
        return _call(method, url, path, headers=_bearer(cached.access_token))
    except LoginError as e:
        if EXPIRED not in str(e):
            raise
    tokens = _call(
        "POST", url, "/api/auth/session/refresh", json={"refresh_token": cached.refresh_token}
    )
    fresh = Login(
        url, cached.provider, cached.username, tokens["access_token"], tokens["refresh_token"]
    )
    save(fresh)
    return _call(method, url, path, headers=_bearer(fresh.access_token))


def logout(url: str) -> bool:
    """End the session at the gateway (if it answers) and forget the tokens; False if none."""
    cached = load(url)
    if cached is None:
        return False
    try:
        authorized(url, "POST", "/api/auth/logout")  # refreshed first if it expired
    except GatewayUnreachable:
        pass  # forgotten here all the same; the session ends at its expiry
    except LoginError:
        pass  # an expired token: the session is refreshed no more once forgotten here
    forget(url)
    return True


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def default_url() -> str:
    """$QSERVER_HTTP_SERVER_URI, else the local stack's gateway, else localhost:60610."""
    if os.environ.get(URI_ENV):
        return os.environ[URI_ENV]
    from qserver.localstack import running_stack

    stack = running_stack()
    if stack and stack.get("http_url"):
        return str(stack["http_url"])
    return DEFAULT_URI
