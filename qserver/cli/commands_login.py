"""`qserver login`, `whoami`, `logout`: a login at the HTTP gateway, its tokens cached per user."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import click

from qserver.cli.errors import NoReply, RequestRefused
from qserver.cli.options import CONTEXT

T = TypeVar("T")
URL_HELP = "The gateway [$QSERVER_HTTP_SERVER_URI, else the local stack's, else localhost:60610]."


def _url(url: str | None) -> str:
    from qserver.logins import default_url

    return url or default_url()


def _guarded(call: Callable[[], T]) -> T:
    """The gateway's refusals exit with 2 and its message, an absent gateway with 3."""
    from qserver.logins import GatewayUnreachable, LoginError

    try:
        return call()
    except GatewayUnreachable as e:
        raise NoReply(str(e)) from None
    except LoginError as e:
        raise RequestRefused(str(e)) from None


@click.command("login", context_settings=CONTEXT)
@click.argument("username", required=False)
@click.option("--url", help=URL_HELP)
@click.option("--provider", help="The password provider [the gateway's first].")
@click.option(
    "--password-stdin", is_flag=True, help="Read the password from standard input (scripts)."
)
def login(
    username: str | None, url: str | None, provider: str | None, password_stdin: bool
) -> None:
    """Log in at the gateway; the tokens are kept for you only (mode 0600)."""
    from qserver import logins

    url = _url(url)
    name: str = username or click.prompt("Username")
    password: str
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("Password", hide_input=True)
    done = _guarded(lambda: logins.login(url, name, password, provider))
    click.echo(f"logged in to {url} as {done.username} (provider {done.provider})")


@click.command("whoami", context_settings=CONTEXT)
@click.option("--url", help=URL_HELP)
def whoami(url: str | None) -> None:
    """Who the gateway takes you for, with your roles and scopes."""
    from qserver import logins

    url = _url(url)
    who = _guarded(lambda: logins.authorized(url, "GET", "/api/auth/whoami"))
    ids = ", ".join(f"{i['id']} ({i['provider']})" for i in who.get("identities", []))
    click.echo(f"{ids} at {url}")
    click.echo(f"  principal {who.get('uuid')}")
    click.echo(f"  roles     {', '.join(who.get('roles', [])) or '-'}")
    click.echo(f"  scopes    {', '.join(who.get('scopes', [])) or '-'}")
    sessions = [s for s in who.get("sessions", []) if not s.get("revoked")]
    click.echo(f"  sessions  {len(sessions)}, API keys {len(who.get('api_keys', []))}")


@click.command("logout", context_settings=CONTEXT)
@click.option("--url", help=URL_HELP)
def logout(url: str | None) -> None:
    """End your session at the gateway and forget its tokens."""
    from qserver import logins

    url = _url(url)
    if _guarded(lambda: logins.logout(url)):
        click.echo(f"logged out of {url}")
    else:
        click.echo(f"not logged in to {url}")
