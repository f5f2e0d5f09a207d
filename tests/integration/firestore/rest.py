"""A signed-in user of the Planty app talking to the emulator's REST API, so firestore.rules
apply (the emulator takes an unsigned ID token, as Firebase's own rules-testing kit sends)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from typing import Any

import httpx


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def user_token(project: str, uid: str) -> str:
    now = int(time.time())
    header = {"alg": "none", "kid": "fakekid", "typ": "JWT"}
    payload = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "iat": now,
        "exp": now + 3600,
        "auth_time": now,
        "sub": uid,
        "user_id": uid,
        "firebase": {"sign_in_provider": "custom", "identities": {}},
    }
    return f"{_b64(header)}.{_b64(payload)}."


def decode(value: dict[str, Any]) -> Any:
    """One REST `Value` -> Python."""
    ((kind, raw),) = value.items()
    if kind == "nullValue":
        return None
    if kind == "integerValue":
        return int(raw)
    if kind == "timestampValue":
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if kind == "mapValue":
        return {k: decode(v) for k, v in raw.get("fields", {}).items()}
    if kind == "arrayValue":
        return [decode(v) for v in raw.get("values", [])]
    return raw  # stringValue, doubleValue, booleanValue


class UserClient:
    """`await user.get(path)` -> (status, fields); `await user.update(path, {...})` -> status."""

    def __init__(self, host: str, project: str, uid: str) -> None:
        self.uid = uid
        self._base = f"http://{host}/v1/projects/{project}/databases/(default)/documents"
        self._headers = {"Authorization": f"Bearer {user_token(project, uid)}"}

    async def get(self, path: str) -> tuple[int, dict[str, Any] | None]:
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.get(f"{self._base}/{path}", headers=self._headers)
        if r.status_code != 200:
            return r.status_code, None
        return 200, {k: decode(v) for k, v in r.json().get("fields", {}).items()}

    async def update(self, path: str, fields: dict[str, str | None]) -> int:
        """Set top-level string (or null) fields, leaving the others as they are."""
        body = {
            "fields": {
                k: ({"nullValue": None} if v is None else {"stringValue": v})
                for k, v in fields.items()
            }
        }
        params = [("updateMask.fieldPaths", k) for k in fields] + [
            ("currentDocument.exists", "true")
        ]
        async with httpx.AsyncClient(timeout=10) as c:
            r = await c.patch(
                f"{self._base}/{path}", params=params, json=body, headers=self._headers
            )
        return r.status_code
