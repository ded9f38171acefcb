"""Who may do what: bluesky-httpserver's API access and resource access policies.

`BasicAPIAccessControl` knows the two special users and the roles (tunable with
`scopes_set` / `scopes_add` / `scopes_remove`); `DictionaryAPIAccessControl` adds users with
their roles, displayed name and e-mail. `DefaultResourceAccessControl` puts every user in one
group. The same names and arguments as the reference's, so its configuration moves over.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.gateway.auth import (
    ALL_SCOPES,
    DEFAULT_ROLES,
    DEFAULT_USER_GROUP,
    PUBLIC_USER_NAME,
    SINGLE_USER_NAME,
)


class PolicyError(ValueError):
    """A policy's arguments are wrong; the message names the setting."""


_SCOPE_RE = re.compile(r"^[0-9a-zA-Z:_]+$")
_ROLE_RE = re.compile(r"^[a-zA-Z_][0-9a-zA-Z_.@\-+]*$")
_USER_RE = re.compile(r"^[0-9a-zA-Z_.@\-+]+$")
_GROUP_RE = re.compile(r"^[a-zA-Z_][0-9a-zA-Z_]*$")


@dataclass(frozen=True)
class UserInfo:
    roles: tuple[str, ...] = ()
    displayed_name: str | None = None
    email: str | None = None


SPECIAL_USERS = {
    SINGLE_USER_NAME: UserInfo(roles=("unauthenticated_single_user",)),
    PUBLIC_USER_NAME: UserInfo(roles=("unauthenticated_public",)),
}


def _scope_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise PolicyError(f"{where} must be a scope or a list of scopes, not {value!r}")
    for s in items:
        if not _SCOPE_RE.match(s):
            raise PolicyError(f"{where}: {s!r} is not a valid scope name")
    return [s.lower() for s in items]


def tuned_roles(roles: Any) -> dict[str, frozenset[str]]:
    """The default roles changed by `roles: {role: {scopes_set|scopes_add|scopes_remove}}`."""
    out = dict(DEFAULT_ROLES)
    if roles is None:
        return out
    if not isinstance(roles, Mapping):
        raise PolicyError(f"api_access args 'roles' must be a mapping, not {roles!r}")
    for role, ops in roles.items():
        if not isinstance(role, str) or not _ROLE_RE.match(role):
            raise PolicyError(f"api_access args 'roles': {role!r} is not a valid role name")
        ops = {"scopes_set": []} if ops is None else ops
        if not isinstance(ops, Mapping):
            raise PolicyError(f"api_access roles '{role}' must be a mapping, not {ops!r}")
        unknown = set(ops) - {"scopes_set", "scopes_add", "scopes_remove"}
        if unknown:
            raise PolicyError(
                f"api_access roles '{role}': unsupported setting(s) {sorted(unknown)} "
                "(use scopes_set, scopes_add, scopes_remove)"
            )
        scopes = set(out.get(role, frozenset()))
        if "scopes_set" in ops:
            scopes = set(_scope_list(ops["scopes_set"], f"roles '{role}' scopes_set"))
        scopes |= set(_scope_list(ops.get("scopes_add"), f"roles '{role}' scopes_add"))
        scopes -= set(_scope_list(ops.get("scopes_remove"), f"roles '{role}' scopes_remove"))
        out[role] = frozenset(scopes)
    return out


def _users(users: Any) -> dict[str, UserInfo]:
    if users is None:
        return {}
    if not isinstance(users, Mapping):
        raise PolicyError(f"api_access args 'users' must be a mapping, not {users!r}")
    out = {}
    for name, info in users.items():
        if not isinstance(name, str) or not _USER_RE.match(name):
            raise PolicyError(f"api_access users: {name!r} is not a valid user name")
        info = info or {}
        if not isinstance(info, Mapping):
            raise PolicyError(f"api_access users '{name}' must be a mapping, not {info!r}")
        unknown = set(info) - {"roles", "displayed_name", "email"}
        if unknown:
            raise PolicyError(
                f"api_access users '{name}': unsupported setting(s) {sorted(unknown)} "
                "(use roles, displayed_name, email)"
            )
        roles = info.get("roles") or []
        roles = [roles] if isinstance(roles, str) else roles
        if not isinstance(roles, list) or not all(
            isinstance(r, str) and _GROUP_RE.match(r) for r in roles
        ):
            raise PolicyError(f"api_access users '{name}': roles must be role names: {roles!r}")
        email = info.get("email")
        if email is not None and (not isinstance(email, str) or "@" not in email):
            raise PolicyError(f"api_access users '{name}': {email!r} is not an e-mail address")
        shown = info.get("displayed_name")
        if shown is not None and not isinstance(shown, str):
            raise PolicyError(f"api_access users '{name}': displayed_name must be a string")
        out[name] = UserInfo(tuple(r.lower() for r in roles), shown or None, email or None)
    return out


@dataclass(frozen=True)
class ApiAccess:
    """The API access policy: users, their roles and the roles' scopes."""

    roles: Mapping[str, frozenset[str]] = field(default_factory=lambda: dict(DEFAULT_ROLES))
    users: Mapping[str, UserInfo] = field(default_factory=lambda: dict(SPECIAL_USERS))

    def is_known(self, username: str) -> bool:
        return username in self.users

    def roles_of(self, username: str) -> frozenset[str]:
        info = self.users.get(username)
        return frozenset(info.roles) if info else frozenset()

    def scopes_of(self, username: str) -> frozenset[str]:
        out: set[str] = set()
        for role in self.roles_of(username):
            out |= self.roles.get(role, frozenset())
        return frozenset(out & ALL_SCOPES)

    def displayed_name(self, username: str) -> str:
        """`jdoe`, `jdoe <jdoe@x.org>`, `jdoe "John Doe"` or `jdoe "John Doe <jdoe@x.org>"`."""
        info = self.users.get(username) or UserInfo()
        if info.displayed_name and info.email:
            return f'{username} "{info.displayed_name} <{info.email}>"'
        if info.displayed_name:
            return f'{username} "{info.displayed_name}"'
        if info.email:
            return f"{username} <{info.email}>"
        return username


def _args(args: Any, allowed: set[str], policy: str) -> Mapping[str, Any]:
    args = args or {}
    if not isinstance(args, Mapping):
        raise PolicyError(f"{policy} args must be a mapping, not {args!r}")
    unknown = set(args) - allowed
    if unknown:
        raise PolicyError(
            f"{policy}: unsupported argument(s) {sorted(unknown)} "
            f"(supported: {', '.join(sorted(allowed)) or 'none'})"
        )
    return args


def basic_access(args: Any) -> ApiAccess:
    a = _args(args, {"roles"}, "BasicAPIAccessControl")
    return ApiAccess(roles=tuned_roles(a.get("roles")))


def dictionary_access(args: Any) -> ApiAccess:
    a = _args(args, {"roles", "users"}, "DictionaryAPIAccessControl")
    return ApiAccess(
        roles=tuned_roles(a.get("roles")), users={**SPECIAL_USERS, **_users(a.get("users"))}
    )


API_POLICIES = {
    "BasicAPIAccessControl": basic_access,
    "DictionaryAPIAccessControl": dictionary_access,
}


def default_group(args: Any) -> str:
    """`DefaultResourceAccessControl`: every user is in one group (`primary` by default)."""
    a = _args(args, {"default_group"}, "DefaultResourceAccessControl")
    group = a.get("default_group") or DEFAULT_USER_GROUP
    if not isinstance(group, str) or not _GROUP_RE.match(group):
        raise PolicyError(f"DefaultResourceAccessControl: {group!r} is not a valid group name")
    return group
