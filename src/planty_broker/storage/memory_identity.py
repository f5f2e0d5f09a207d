"""`IdentityStore` in dictionaries: the fast fake beside `storage.sql_identity`, for unit tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from planty_broker.domain.identity import ApiToken, CredentialState, DeviceCredential, Pairing

if TYPE_CHECKING:
    from planty_broker.ports.store import IdentityStore


class MemoryIdentityStore:
    """`IdentityStore` in dictionaries, for unit tests."""

    def __init__(self) -> None:
        self._tokens: dict[str, ApiToken] = {}
        self._pairing: Pairing | None = None
        self._credentials: dict[str, DeviceCredential] = {}

    async def add_token(self, token: ApiToken) -> None:
        if token.id in self._tokens or any(t.digest == token.digest for t in self._tokens.values()):
            raise ValueError(f"token {token.id} or its digest exists")
        self._tokens[token.id] = token

    async def list_tokens(self) -> list[ApiToken]:
        return sorted(self._tokens.values(), key=lambda t: (t.created_ms, t.id))

    async def token_by_digest(self, digest: str) -> ApiToken | None:
        return next((t for t in self._tokens.values() if t.digest == digest), None)

    async def revoke_token(self, token_id: str, at_ms: int) -> ApiToken | None:
        t = self._tokens.get(token_id)
        if t is not None and t.revoked_ms is None:
            t = self._tokens[token_id] = dataclasses.replace(t, revoked_ms=at_ms)
        return t

    async def touch_tokens(self, last_used: Mapping[str, int]) -> None:
        for token_id, at in last_used.items():
            t = self._tokens.get(token_id)
            if t is not None and (t.last_used_ms is None or t.last_used_ms < at):
                self._tokens[token_id] = dataclasses.replace(t, last_used_ms=at)

    async def get_pairing(self) -> Pairing | None:
        return self._pairing

    async def set_pairing(self, value: Pairing) -> bool:
        if self._pairing is not None:
            return False
        self._pairing = value
        return True

    async def clear_pairing(self) -> Pairing | None:
        old, self._pairing = self._pairing, None
        return old

    async def save_credential(self, credential: DeviceCredential) -> None:
        self._credentials[credential.id] = credential

    async def save_credentials(self, credentials: Sequence[DeviceCredential]) -> None:
        for c in credentials:
            if c.id in self._credentials:
                raise ValueError(f"credential {c.id} exists")
        self._credentials.update((c.id, c) for c in credentials)

    async def mark_credentials_used(self, first_used: Mapping[str, int]) -> None:
        for cid, at in first_used.items():
            c = self._credentials.get(cid)
            if c is not None and c.first_used_ms is None:
                self._credentials[cid] = dataclasses.replace(c, first_used_ms=at)

    async def list_credentials(
        self, device_id: str | None = None, states: Sequence[CredentialState] | None = None
    ) -> list[DeviceCredential]:
        found = [
            c
            for c in self._credentials.values()
            if (device_id is None or c.device_id == device_id)
            and (states is None or c.state in states)
        ]
        return sorted(found, key=lambda c: (c.created_ms, c.id))


if TYPE_CHECKING:
    _memory_check: IdentityStore = MemoryIdentityStore()
