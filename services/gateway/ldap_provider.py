"""LDAP logins with bluesky-httpserver's `LDAPAuthenticator` arguments, through python-ldap.

A user is in when a simple bind with their DN (from `bind_dn_template`, or looked up with a
search user: `lookup_dn`) and password succeeds, and, if `allowed_groups` is set, when one
of those groups lists them (`member`, `uniqueMember` or `memberUid`). User names must match
`valid_username_regex` and passwords must not be empty (an empty one would be an anonymous
bind, which LDAP servers accept).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.gateway.providers import Mode, ProviderError, check_args

logger = logging.getLogger(__name__)

OPTIONAL = {
    "server_port",
    "use_ssl",
    "use_tls",
    "connect_timeout",
    "receive_timeout",
    "bind_dn_template",
    "allowed_groups",
    "valid_username_regex",
    "lookup_dn",
    "user_search_base",
    "user_attribute",
    "lookup_dn_search_filter",
    "lookup_dn_search_user",
    "lookup_dn_search_password",
    "lookup_dn_user_dn_attribute",
    "escape_userdn",
    "search_filter",
    "use_lookup_dn_username",
    "attributes",
    "auth_state_attributes",
}


@dataclass(frozen=True, kw_only=True)
class LdapProvider:
    uris: tuple[str, ...]
    use_tls: bool = True
    connect_timeout: float = 5.0
    receive_timeout: float = 60.0
    bind_dn_template: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    valid_username_regex: str = r"^[a-z][.a-z0-9_-]*$"
    lookup_dn: bool = False
    user_search_base: str | None = None
    user_attribute: str | None = None
    lookup_dn_search_filter: str = "({login_attr}={login})"
    lookup_dn_search_user: str | None = None
    lookup_dn_search_password: str | None = None
    lookup_dn_user_dn_attribute: str | None = None
    escape_userdn: bool = False
    search_filter: str = ""
    use_lookup_dn_username: bool = True
    mode: Mode = "password"

    async def authenticate(self, username: str, password: str) -> str | None:
        if not re.match(self.valid_username_regex, username):
            logger.warning(
                "LDAP: user name %r does not match %s", username, self.valid_username_regex
            )
            return None
        if not password or not password.strip():
            logger.warning("LDAP: login of %r with an empty password refused", username)
            return None
        return await asyncio.to_thread(self._check, username, password)

    def _connect(self) -> Any:
        import ldap

        conn = ldap.initialize(" ".join(self.uris))  # several servers: tried in turn
        conn.protocol_version = ldap.VERSION3
        conn.set_option(ldap.OPT_REFERRALS, 0)
        conn.set_option(ldap.OPT_NETWORK_TIMEOUT, self.connect_timeout)
        conn.set_option(ldap.OPT_TIMEOUT, self.receive_timeout)
        if self.use_tls and not any(u.startswith("ldaps://") for u in self.uris):
            conn.start_tls_s()
        return conn

    def _bind(self, dn: str, password: str) -> Any:
        """A connection bound as `dn`, or None if the server refuses the password."""
        import ldap

        conn = self._connect()
        try:
            conn.simple_bind_s(dn, password)
        except (ldap.INVALID_CREDENTIALS, ldap.INVALID_DN_SYNTAX, ldap.UNWILLING_TO_PERFORM):
            conn.unbind_s()
            return None
        return conn

    def _lookup(self, username: str) -> tuple[str, str] | None:
        """(name from `lookup_dn_user_dn_attribute`, entry DN) of the user, via the search user."""
        import ldap
        from ldap.filter import escape_filter_chars

        conn = self._bind(self.lookup_dn_search_user or "", self.lookup_dn_search_password or "")
        if conn is None:
            logger.warning("LDAP: the search user %r cannot bind", self.lookup_dn_search_user)
            return None
        try:
            query = self.lookup_dn_search_filter.format(
                login_attr=self.user_attribute, login=escape_filter_chars(username)
            )
            attr = self.lookup_dn_user_dn_attribute or "dn"
            found = conn.search_s(self.user_search_base or "", ldap.SCOPE_SUBTREE, query, [attr])
        finally:
            conn.unbind_s()
        entries = [(dn, attrs) for dn, attrs in found if dn]
        if not entries:
            logger.warning("LDAP: no entry for %r (%s)", username, query)
            return None
        dn, attrs = entries[0]
        values = attrs.get(attr) or [dn.encode()]
        return values[0].decode(), dn

    def _check(self, username: str, password: str) -> str | None:
        import ldap
        from ldap.dn import escape_dn_chars
        from ldap.filter import escape_filter_chars

        supplied = username
        templates = list(self.bind_dn_template)
        try:
            if self.lookup_dn:
                found = self._lookup(username)
                if found is None:
                    return None
                username, resolved_dn = found
                templates = templates or [resolved_dn]
            conn = user_dn = None
            for template in templates:
                name = escape_dn_chars(username) if self.escape_userdn else username
                user_dn = template.format(username=name)
                conn = self._bind(user_dn, password)
                if conn is not None:
                    break
            if conn is None or user_dn is None:
                logger.warning("LDAP: invalid password for %r", supplied)
                return None
            try:
                if self.search_filter:
                    query = self.search_filter.format(
                        userattr=self.user_attribute, username=escape_filter_chars(username)
                    )
                    hits = conn.search_s(self.user_search_base or "", ldap.SCOPE_SUBTREE, query)
                    if len([h for h in hits if h[0]]) != 1:
                        logger.warning("LDAP: %r is not one entry of %s", supplied, query)
                        return None
                if self.allowed_groups and not self._in_groups(conn, user_dn, username):
                    logger.warning("LDAP: %r is in none of the allowed groups", supplied)
                    return None
            finally:
                conn.unbind_s()
        except ldap.LDAPError as e:
            logger.warning("LDAP: login of %r failed: %s", supplied, e)
            return None
        return username if self.use_lookup_dn_username else supplied

    def _in_groups(self, conn: Any, user_dn: str, uid: str) -> bool:
        import ldap
        from ldap.filter import escape_filter_chars

        dn, name = escape_filter_chars(user_dn), escape_filter_chars(uid)
        query = f"(|(member={dn})(uniqueMember={dn})(memberUid={name}))"
        for group in self.allowed_groups:
            try:
                if conn.search_s(group, ldap.SCOPE_BASE, query, ["cn"]):
                    return True
            except ldap.NO_SUCH_OBJECT:
                continue
        return False


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise ProviderError(f"LDAPAuthenticator: {name} must be a string or a list of strings")
    return tuple(items)


def ldap_provider(args: Any) -> LdapProvider:
    a: Mapping[str, Any] = check_args("LDAPAuthenticator", args, {"server_address"}, OPTIONAL)
    try:
        import ldap  # noqa: F401
    except ImportError:
        raise ProviderError(
            "LDAPAuthenticator needs python-ldap: pip install 'qserver[ldap]' "
            "(it builds against libldap: apt-get install libldap2-dev libsasl2-dev)"
        ) from None
    for unsupported in ("attributes", "auth_state_attributes"):
        if a.get(unsupported):
            raise ProviderError(
                f"LDAPAuthenticator: {unsupported} is not supported (the gateway keeps no "
                "per-login user attributes)"
            )
    use_ssl = bool(a.get("use_ssl", False))
    port = a.get("server_port") or (636 if use_ssl else 389)
    scheme = "ldaps" if use_ssl else "ldap"
    uris = []
    for address in _strings(a["server_address"], "server_address"):
        host_port = address if re.search(r".+:\d+$", address) else f"{address}:{port}"
        uris.append(f"{scheme}://{host_port}")
    if not uris:
        raise ProviderError("LDAPAuthenticator: server_address names no server")
    provider = LdapProvider(
        uris=tuple(uris),
        use_tls=bool(a.get("use_tls", True)),
        connect_timeout=float(a.get("connect_timeout", 5)),
        receive_timeout=float(a.get("receive_timeout", 60)),
        bind_dn_template=_strings(a.get("bind_dn_template"), "bind_dn_template"),
        allowed_groups=_strings(a.get("allowed_groups"), "allowed_groups"),
        valid_username_regex=a.get("valid_username_regex", r"^[a-z][.a-z0-9_-]*$"),
        lookup_dn=bool(a.get("lookup_dn", False)),
        user_search_base=a.get("user_search_base"),
        user_attribute=a.get("user_attribute"),
        lookup_dn_search_filter=a.get("lookup_dn_search_filter", "({login_attr}={login})"),
        lookup_dn_search_user=a.get("lookup_dn_search_user"),
        lookup_dn_search_password=a.get("lookup_dn_search_password"),
        lookup_dn_user_dn_attribute=a.get("lookup_dn_user_dn_attribute"),
        escape_userdn=bool(a.get("escape_userdn", False)),
        search_filter=a.get("search_filter") or "",
        use_lookup_dn_username=bool(a.get("use_lookup_dn_username", True)),
    )
    if not provider.lookup_dn and not provider.bind_dn_template:
        raise ProviderError(
            "LDAPAuthenticator: give bind_dn_template, or lookup_dn with its settings"
        )
    return provider
