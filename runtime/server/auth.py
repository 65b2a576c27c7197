"""API keys: where they come from, how a presented key is checked, and what it may do.

A key has scopes — ``solve`` (``/v1/solve``, ``/v1/chat/completions``, ``/v1/models``) and
``execute`` (``/v1/sessions``) — and a name that logs and metrics show instead of the secret.
Keys come from ``MATHCODER_SERVER_API_KEYS`` and/or ``MATHCODER_SERVER_API_KEYS_FILE``, one per
line (``;`` also separates entries in the variable):

    KEY SCOPE[,SCOPE] [NAME]        # e.g.  sk-4f2c...  solve,execute  trainer

A presented key is hashed and compared with every stored hash by ``hmac.compare_digest``, without
stopping at a match, so the time taken says nothing about which key or how much of it matched.
Missing or unknown key: 401.  A known key without the scope: 403.  With ``no_auth`` (loopback
only) every caller is the principal ``anonymous`` with every scope.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from runtime.server.errors import Forbidden, Unauthorized
from runtime.server.settings import ServerSettings


class Scope(StrEnum):
    SOLVE = "solve"
    EXECUTE = "execute"


class AuthConfigError(ValueError):
    """The key configuration is unusable; the message names the setting and the line."""


@dataclass(frozen=True)
class Principal:
    """Who made a request: a key's name (never the key) and what it may do."""

    name: str
    scopes: frozenset[Scope]


@dataclass(frozen=True)
class _StoredKey:
    digest: bytes
    principal: Principal


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def parse_keys(text: str, source: str) -> list[tuple[str, Principal]]:
    """Entries of ``KEY SCOPE[,SCOPE] [NAME]``; errors name ``source`` and the entry's number."""
    entries = []
    for number, raw in enumerate(text.replace(";", "\n").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) not in (2, 3):
            raise AuthConfigError(f"{source}, entry {number}: expected `KEY SCOPE[,SCOPE] [NAME]`")
        key, scopes_text = fields[0], fields[1]
        try:
            scopes = frozenset(Scope(s) for s in scopes_text.split(",") if s)
        except ValueError:
            raise AuthConfigError(
                f"{source}, entry {number}: unknown scope in {scopes_text!r}; scopes are "
                f"{', '.join(s.value for s in Scope)}"
            ) from None
        if len(key) < 16:
            raise AuthConfigError(f"{source}, entry {number}: a key must have at least 16 characters")
        name = fields[2] if len(fields) == 3 else f"key-{_digest(key).hex()[:8]}"
        entries.append((key, Principal(name=name, scopes=scopes)))
    return entries


class KeyStore:
    """The configured keys, or none at all when the server runs without authentication."""

    ANONYMOUS = Principal(name="anonymous", scopes=frozenset(Scope))

    def __init__(self, entries: list[tuple[str, Principal]], *, no_auth: bool = False) -> None:
        self.no_auth = no_auth
        self._keys = [_StoredKey(_digest(key), principal) for key, principal in entries]

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> KeyStore:
        entries: list[tuple[str, Principal]] = []
        if settings.api_keys is not None:
            entries += parse_keys(settings.api_keys.get_secret_value(), "MATHCODER_SERVER_API_KEYS")
        if settings.api_keys_file is not None:
            path = Path(settings.api_keys_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise AuthConfigError(f"MATHCODER_SERVER_API_KEYS_FILE: cannot read {path}: {exc}") from exc
            entries += parse_keys(text, str(path))
        if not entries and not settings.no_auth:
            raise AuthConfigError(
                "no API keys configured: set MATHCODER_SERVER_API_KEYS or MATHCODER_SERVER_API_KEYS_FILE "
                "(`KEY SCOPE[,SCOPE] [NAME]` per line), or MATHCODER_SERVER_NO_AUTH=true on a loopback host"
            )
        names = [p.name for _, p in entries]
        if len(set(names)) != len(names):
            raise AuthConfigError(f"API key names must be unique; got {sorted(names)}")
        return cls(entries, no_auth=settings.no_auth and not entries)

    def identify(self, authorization: str | None) -> Principal:
        """The principal behind an ``Authorization`` header; raises ``Unauthorized``."""
        if self.no_auth:
            return self.ANONYMOUS
        if authorization is None:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Unauthorized("malformed Authorization header: expected `Bearer <key>`")
        digest = _digest(presented.strip())
        found: Principal | None = None
        for stored in self._keys:  # no early exit: every key is compared
            if hmac.compare_digest(digest, stored.digest):
                found = stored.principal
        if found is None:
            raise Unauthorized("invalid API key")
        return found

    @staticmethod
    def require(principal: Principal, scope: Scope) -> Principal:
        if scope not in principal.scopes:
            held = ", ".join(sorted(s.value for s in principal.scopes)) or "none"
            raise Forbidden(
                f"API key {principal.name!r} lacks the {scope.value!r} scope (it has: {held})",
                code="insufficient_scope",
            )
        return principal
