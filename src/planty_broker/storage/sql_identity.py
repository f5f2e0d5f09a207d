"""`IdentityStore` on SQL: API tokens, the pairing, device credentials (tables of 0003).

Runs on a `SqlStore`'s worker thread (`SqlStore.run`, one transaction per call);
`storage.memory_identity.MemoryIdentityStore` is the fake beside it, with the same
values and order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.engine import Connection

from planty_broker.domain.identity import (
    ApiToken,
    CredentialKind,
    CredentialOrigin,
    CredentialState,
    DeviceCredential,
    Pairing,
    TokenScope,
)
from planty_broker.ports.store import IdentityStore
from planty_broker.storage.schema_identity import api_tokens, device_credentials, pairing

if TYPE_CHECKING:
    from planty_broker.storage.sql import SqlStore

_PAIRING_ROW = "broker"


# ---------------------------------------------------------------- rows


def _token(r: Row[Any]) -> ApiToken:
    return ApiToken(
        id=r.id,
        name=r.name,
        scope=TokenScope(r.scope),
        digest=r.digest,
        origin=r.origin,
        created_ms=r.created_ms,
        last_used_ms=r.last_used_ms,
        revoked_ms=r.revoked_ms,
    )


def _credential(r: Row[Any]) -> DeviceCredential:
    values = dict(r._mapping)
    values["kind"] = CredentialKind(values["kind"])
    values["state"] = CredentialState(values["state"])
    values["origin"] = CredentialOrigin(values["origin"])
    return DeviceCredential(**values)


def _credential_values(c: DeviceCredential) -> dict[str, Any]:
    values = dataclasses.asdict(c)
    for key in ("kind", "state", "origin"):
        values[key] = str(values[key])
    return values


# ---------------------------------------------------------------- SQL


class SqlIdentityStore:
    """`IdentityStore` on the gateway's `SqlStore` (SQLite or PostgreSQL)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    async def add_token(self, token: ApiToken) -> None:
        values = dataclasses.asdict(token)
        values["scope"] = str(token.scope)
        await self._store.run(lambda c: c.execute(api_tokens.insert().values(**values)))

    async def list_tokens(self) -> list[ApiToken]:
        q = select(*api_tokens.c).order_by(api_tokens.c.created_ms, api_tokens.c.id)
        found = await self._store.run(lambda c: c.execute(q).all())
        return [_token(r) for r in found]

    async def token_by_digest(self, digest: str) -> ApiToken | None:
        q = select(*api_tokens.c).where(api_tokens.c.digest == digest)
        found = await self._store.run(lambda c: c.execute(q).first())
        return None if found is None else _token(found)

    async def revoke_token(self, token_id: str, at_ms: int) -> ApiToken | None:
        t = api_tokens.c

        def run(c: Connection) -> Row[Any] | None:
            c.execute(
                update(api_tokens)
                .where(t.id == token_id, t.revoked_ms.is_(None))
                .values(revoked_ms=at_ms)
            )
            return c.execute(select(*api_tokens.c).where(t.id == token_id)).first()

        found = await self._store.run(run)
        return None if found is None else _token(found)

    async def touch_tokens(self, last_used: Mapping[str, int]) -> None:
        if not last_used:
            return
        t = api_tokens.c

        def run(c: Connection) -> None:
            for token_id, at in sorted(last_used.items()):
                c.execute(
                    update(api_tokens)
                    .where(t.id == token_id)
                    .where((t.last_used_ms.is_(None)) | (t.last_used_ms < at))
                    .values(last_used_ms=at)
                )

        await self._store.run(run)

    async def get_pairing(self) -> Pairing | None:
        q = select(pairing.c.account_id, pairing.c.token_id, pairing.c.paired_ms).where(
            pairing.c.id == _PAIRING_ROW
        )
        found = await self._store.run(lambda c: c.execute(q).first())
        return None if found is None else Pairing(*found)

    async def set_pairing(self, value: Pairing) -> bool:
        def run(c: Connection) -> bool:
            exists = c.execute(select(pairing.c.id).where(pairing.c.id == _PAIRING_ROW)).first()
            if exists is not None:
                return False
            c.execute(pairing.insert().values(id=_PAIRING_ROW, **dataclasses.asdict(value)))
            return True

        return await self._store.run(run)

    async def clear_pairing(self) -> Pairing | None:
        def run(c: Connection) -> Pairing | None:
            q = select(pairing.c.account_id, pairing.c.token_id, pairing.c.paired_ms)
            found = c.execute(q.where(pairing.c.id == _PAIRING_ROW)).first()
            c.execute(pairing.delete().where(pairing.c.id == _PAIRING_ROW))
            return None if found is None else Pairing(*found)

        return await self._store.run(run)

    async def save_credential(self, credential: DeviceCredential) -> None:
        values = _credential_values(credential)
        t = device_credentials.c

        def run(c: Connection) -> None:
            done = c.execute(
                update(device_credentials).where(t.id == credential.id).values(**values)
            )
            if not done.rowcount:
                c.execute(device_credentials.insert().values(**values))

        await self._store.run(run)

    async def save_credentials(self, credentials: Sequence[DeviceCredential]) -> None:
        rows = [_credential_values(c) for c in credentials]
        if rows:
            await self._store.run(lambda c: c.execute(device_credentials.insert(), rows))

    async def mark_credentials_used(self, first_used: Mapping[str, int]) -> None:
        t = device_credentials.c
        rows = [{"cid": cid, "at": at} for cid, at in first_used.items()]
        q = (
            update(device_credentials)
            .where(t.id == bindparam("cid"), t.first_used_ms.is_(None))
            .values(first_used_ms=bindparam("at"))
        )
        if rows:
            await self._store.run(lambda c: c.execute(q, rows))

    async def list_credentials(
        self, device_id: str | None = None, states: Sequence[CredentialState] | None = None
    ) -> list[DeviceCredential]:
        t = device_credentials.c
        q = select(*device_credentials.c)
        if device_id is not None:
            q = q.where(t.device_id == device_id)
        if states is not None:
            q = q.where(t.state.in_([str(s) for s in states]))
        q = q.order_by(t.created_ms, t.id)
        found = await self._store.run(lambda c: c.execute(q).all())
        return [_credential(r) for r in found]


if TYPE_CHECKING:
    _sql_check: IdentityStore = SqlIdentityStore(None)  # type: ignore[arg-type]
