"""Identity commands: `planty pair|unpair|audit`, `planty tokens ...`, and the credential commands
under `planty devices` (accept, rotate, revoke, credentials, cert, claim-credential).

Secrets (a new API token, a certificate's key, the claim secret) are printed once on
stdout, never logged; the gateway keeps only their hashes (the claim secret excepted).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from planty_broker.cli.client import (
    ConfigOpt,
    DataDirOpt,
    UrlOpt,
    ago,
    client,
    console,
    fail,
    warn,
)
from planty_broker.cli.devices import devices_app
from planty_broker.cli.tables import Column, fit_table

tokens_app = typer.Typer(help="Create, list and revoke API tokens (admin, server, read).")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `5m`, `1.5h`, `2d` -> seconds."""
    m = _DURATION.match(text.lower())
    if m is None or float(m.group(1)) <= 0:
        fail(f"{text!r} is not a duration: use e.g. 300, 90s, 5m, 2h or 1d")
    return float(m.group(1)) * _UNIT[m.group(2)]


def _json(data: Any) -> None:
    console.print_json(json.dumps(data))


# ---------------------------------------------------------------- pairing


def pair(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Show the pairing code (while not paired) or who this broker is paired with."""
    data = client(config, data_dir, url).call("GET", "/pairing")
    if as_json:
        _json(data)
        return
    if data["paired"]:
        console.print(
            Text.assemble(
                "paired with account ",
                (str(data["account_id"]), "bold"),
                f" since {ago(data['paired_at'])} (API token {data['token_id']})",
            )
        )
        return
    console.print(Text.assemble("pairing code: ", (str(data.get("code", "?")), "bold")))
    console.print(
        f"  single use, valid until {data['expires_at']}; claim it from the Planty app or "
        'with POST /api/v1/pairing/claim {"code", "account_id"}'
    )


def unpair(config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None) -> None:
    """Undo the pairing; the server's API token stops working at once."""
    data = client(config, data_dir, url).call("DELETE", "/pairing")
    console.print(
        f"unpaired from account {data['account_id']}; API token {data['revoked_token_id']} revoked"
    )


# ---------------------------------------------------------------- tokens


@tokens_app.command("create")
def create_token(
    name: Annotated[str, typer.Argument(help="what the token is for, e.g. planty-server")],
    scope: Annotated[
        str, typer.Option("--scope", help="admin, server (devices, commands, ...) or read")
    ] = "server",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Create an API token; its secret is printed once."""
    data = client(config, data_dir, url).call(
        "POST", "/tokens", json={"name": name, "scope": scope}
    )
    console.print(data["token"])
    warn(f"token {data['id']} ({data['scope']}): shown only once, store it now")


@tokens_app.command("list")
def list_tokens(
    include_revoked: Annotated[bool, typer.Option("--all", help="revoked ones too")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """API tokens with their scope and last use (never their secret)."""
    data = client(config, data_dir, url).call(
        "GET", "/tokens", params={"all": str(include_revoked).lower()}
    )
    if as_json:
        _json(data)
        return
    columns = [
        Column("id"),
        Column("name", 1, shrink=10),
        Column("scope"),
        Column("origin", 5),
        Column("created", 4),
        Column("last used", 2),
        Column("revoked", 3),
    ]
    rows = [
        [
            tok["id"],
            tok["name"],
            tok["scope"],
            tok["origin"],
            ago(tok["created_at"]),
            ago(tok["last_used_at"]),
            ago(tok["revoked_at"]) if tok["revoked_at"] else "-",
        ]
        for tok in data["tokens"]
    ]
    n = data["count"]
    console.print(fit_table(columns, rows, console, title=f"{n} API token{'' if n == 1 else 's'}"))


def audit(
    action: Annotated[
        str | None, typer.Option("--action", "-a", help="e.g. token.created, or a group: token")
    ] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="a token's name or id")] = None,
    device: Annotated[str | None, typer.Option("--device", "-d", help="one device's")] = None,
    after: Annotated[int, typer.Option(min=0, help="entries after this event id")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="entries at most")] = 100,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """The audit trail: admin actions with the acting token and the client address."""
    params: dict[str, str | int] = {"after": after, "limit": limit}
    for key, value in (("action", action), ("actor", actor), ("device", device)):
        if value:
            params[key] = value
    data = client(config, data_dir, url).call("GET", "/audit", params=params)
    if as_json:
        _json(data)
        return
    columns = [
        Column("id"),
        Column("when", 3),
        Column("action"),
        Column("actor", 1, shrink=10),
        Column("client", 2),
        Column("device", 4, shrink=10),
        Column("details", 5, shrink=20),
    ]
    rows = [
        [
            str(e["id"]),
            ago(e["at"]),
            e["action"],
            e["actor"],
            e["client"],
            e["device_id"] or "-",
            " ".join(f"{k}={v}" for k, v in e["details"].items()) or "-",
        ]
        for e in data["entries"]
    ]
    title = f"{data['count']} audit entr{'y' if data['count'] == 1 else 'ies'}"
    console.print(fit_table(columns, rows, console, title=title))
    if data["count"] >= limit:
        console.print(f"more: planty audit --after {data['next_after']}")


@tokens_app.command("revoke")
def revoke_token(
    token_id: str, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """Revoke an API token: the next request with it gets 401."""
    client(config, data_dir, url).call("DELETE", f"/tokens/{token_id}")
    console.print(f"API token {token_id} revoked")


# ---------------------------------------------------------------- device credentials


@devices_app.command("accept")
def accept(
    duration: Annotated[
        str, typer.Option("--for", help="how long factory-fresh devices may claim (5m, 1h)")
    ] = "5m",
    close: Annotated[bool, typer.Option("--close", help="close the window now")] = False,
    max_claims: Annotated[
        int | None,
        typer.Option("--max", help="claims this window takes (default: the configured 50)"),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Open a claim window: factory-fresh devices get their own credential while it is open."""
    api = client(config, data_dir, url)
    if close:
        api.call("DELETE", "/provisioning/window")
        console.print("claim window closed: the claim secret is refused")
        return
    body: dict[str, object] = {"duration_s": parse_duration(duration)}
    if max_claims is not None:
        body["max_claims"] = max_claims
    data = api.call("POST", "/provisioning/window", json=body)
    console.print(
        f"claim window open until {data['until']} for at most {data['window_max_claims']} "
        f"claims ({data['claim_usernames']})"
    )


@devices_app.command("rotate")
def rotate(
    device_id: str,
    kind: Annotated[
        str | None, typer.Option("--type", help="token or x509 (default: the current type)")
    ] = None,
    overlap: Annotated[
        str | None, typer.Option("--overlap", help="the old credential works at most this long")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Issue a new credential and deliver it to the device over its command topic."""
    body: dict[str, Any] = {}
    if kind:
        body["type"] = kind
    if overlap:
        body["overlap_s"] = parse_duration(overlap)
    data = client(config, data_dir, url).call("POST", f"/devices/{device_id}/rotate", json=body)
    c = data["credential"]
    console.print(
        f"device {device_id}: new {c['type']} credential {c['id']} sent; the old one "
        f"({data['replaces']}) works until the device confirms or {data['overlap_until']}"
    )


@devices_app.command("revoke")
def revoke(
    device_id: str, config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """Withdraw every credential of a device now: it is cut off and cannot reconnect."""
    data = client(config, data_dir, url).call("POST", f"/devices/{device_id}/revoke")
    ids = ", ".join(c["id"] for c in data["revoked"]) or "none left"
    console.print(f"device {device_id} revoked ({ids}); queued commands cancelled")


@devices_app.command("credentials")
def credentials(
    device_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Every credential of a device and its recent credential events."""
    data = client(config, data_dir, url).call("GET", f"/devices/{device_id}/credentials")
    if as_json:
        _json(data)
        return
    columns = [
        Column("id", shrink=10),
        Column("type"),
        Column("state"),
        Column("origin", 4),
        Column("created", 3),
        Column("first used", 2),
        Column("ended (why)", 1, shrink=12),
    ]
    rows = [
        [
            c["id"],
            c["type"],
            c["state"],
            c["origin"],
            ago(c["created_at"]),
            ago(c["first_used_at"]),
            f"{ago(c['ended_at'])} ({c['end_reason']})" if c["ended_at"] else "-",
        ]
        for c in data["credentials"]
    ]
    console.print(fit_table(columns, rows, console, title=f"credentials of {device_id}"))
    for e in data["events"][-10:]:
        console.print(f"  {e['at']}  {e['event']}  {e.get('reason') or e.get('credential_id')}")


@devices_app.command("cert")
def cert(
    device_id: str,
    out: Annotated[Path, typer.Option("--out", help="folder for <id>.cert.pem and .key.pem")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """Issue an X.509 client certificate (CN = device id) and write it and its key (0600)."""
    data = client(config, data_dir, url).call(
        "POST", f"/devices/{device_id}/credentials", json={"type": "x509"}
    )
    out.mkdir(parents=True, exist_ok=True)
    for suffix, key in (("cert.pem", "cert_pem"), ("key.pem", "key_pem"), ("ca.pem", None)):
        path = out / f"{device_id}.{suffix}"
        text = data[key] if key else data["mqtt"]["ca_pem"]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    m = data["mqtt"]
    console.print(
        f"certificate {data['credential']['id']} for {device_id} written to {out} "
        f"(connect to mqtts://{m['host']}:{m['port']}; the key is not kept by the broker)"
    )


claim_secret_app = typer.Typer(
    help="The factory claim secret: rotate it with an overlap (docs/security.md).",
    no_args_is_help=True,
)
devices_app.add_typer(claim_secret_app, name="claim-secret")


@claim_secret_app.command("rotate")
def claim_secret_rotate(
    overlap: Annotated[
        str, typer.Option("--overlap", help="the previous secret stays accepted this long")
    ] = "7d",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """A new claim secret for firmware flashed from now on; the previous one keeps working
    on its own claim usernames during the overlap. Prints the new secret once."""
    data = client(config, data_dir, url).call(
        "POST", "/provisioning/claim-secret/rotate", json={"overlap_s": parse_duration(overlap)}
    )
    _json(data)
    prev = data.get("previous")
    console.print(
        f"new claim secret: flash it with usernames {data['claim_usernames']}"
        + (
            f"; the previous one works on {prev['claim_usernames']} until {prev['until']}"
            if prev
            else "; the previous one is refused now"
        ),
        highlight=False,
    )


@claim_secret_app.command("end-overlap")
def claim_secret_end_overlap(
    config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """Refuse the previous claim secret now (before its overlap ends)."""
    client(config, data_dir, url).call("DELETE", "/provisioning/claim-secret/previous")
    console.print("the previous claim secret is refused from now on")


pki_app = typer.Typer(
    help="The broker's CA: rotate it with an overlap in which devices trust both CAs.",
    no_args_is_help=True,
)


@pki_app.command("status")
def pki_status(config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None) -> None:
    """The CA rotation phase and when each certificate ends."""
    _json(client(config, data_dir, url).call("GET", "/pki"))


@pki_app.command("rotate-ca")
def pki_rotate_ca(
    step: Annotated[
        str,
        typer.Argument(
            help="start (a new CA, trusted beside the old one), switch (the new CA signs; "
            "only once every device has the new bundle), finish (the old CA is dropped)"
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="write the CA bundle devices need here")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    url: UrlOpt = None,
) -> None:
    """One step of a CA rotation (docs/security.md)."""
    data = client(config, data_dir, url).call("POST", "/pki/rotate-ca", json={"step": step})
    if out is not None:
        out.write_text(data["ca_pem"])
    hint = {
        "overlap": "give every device the new CA bundle (planty devices ca), then: "
        "planty pki rotate-ca switch",
        "switched": "the new CA signs; once no device needs the old one: "
        "planty pki rotate-ca finish",
        "none": "done: devices trust the new CA only",
    }[data["phase"]]
    console.print(f"CA rotation phase {data['phase']}: {hint}", highlight=False)


@devices_app.command("claim-credential")
def claim_credential(
    config: ConfigOpt = None, data_dir: DataDirOpt = None, url: UrlOpt = None
) -> None:
    """What factory firmware needs to claim (the shared claim secret: keep it in the factory)."""
    _json(client(config, data_dir, url).call("GET", "/provisioning/claim-credential"))
