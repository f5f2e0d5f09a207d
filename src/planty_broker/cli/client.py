"""What every `planty` command group shares: options, one-line failures, the API client."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console

from planty_broker.config import ConfigError, Settings, load_settings

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="data folder (store, certs, tokens)")
]
UrlOpt = Annotated[str | None, typer.Option("--url", help="gateway API URL (default from config)")]


def fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(1)


def settings_from(
    config: Path | None, data_dir: Path | None = None, **api_mqtt: int | None
) -> Settings:
    overrides: dict[str, dict[str, Any]] = {}
    if data_dir is not None:
        overrides["gateway"] = {"data_dir": str(data_dir)}
    if api_mqtt.get("api_port"):
        overrides["api"] = {"port": api_mqtt["api_port"]}
    if api_mqtt.get("mqtt_port"):
        overrides["mqtt"] = {"port": api_mqtt["mqtt_port"]}
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        fail(str(exc))


class ApiClient:
    """A small synchronous client of the gateway API for the CLI."""

    def __init__(self, settings: Settings, url: str | None) -> None:
        host = settings.api.host if settings.api.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        self.url = (url or f"http://{host}:{settings.api.port}").rstrip("/")
        token = settings.gateway.admin_token
        if not token:
            path = settings.data_dir / "admin-token"
            try:
                token = path.read_text().strip()
            except OSError:
                fail(
                    f"no admin token: set PLANTY_ADMIN_TOKEN or start the gateway once "
                    f"(it writes {path}); use --data-dir if it runs with another data folder"
                )
        self._client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        self.token = token

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._client.request(method, f"/api/v1{path}", **kw)
        except httpx.ConnectError:
            fail(
                f"cannot reach the gateway at {self.url}: is `planty run` running? (or pass --url)"
            )
        except httpx.HTTPError as exc:
            fail(f"request to {self.url} failed: {exc}")
        if r.status_code >= 400:
            try:
                e = r.json()["error"]
                fail(f"{e['message']} ({r.status_code} {e['code']})")
            except (ValueError, KeyError, TypeError):
                fail(f"{r.status_code} from the gateway: {r.text[:200]}")
        return r.json() if r.content else None


def client(
    config: Path | None = None, data_dir: Path | None = None, url: str | None = None
) -> ApiClient:
    """An API client for the gateway that these settings describe."""
    return ApiClient(settings_from(config, data_dir), url)


def ago(iso_time: str | None) -> str:
    """'12s ago' from an API time, for tables."""
    if not iso_time:
        return "-"
    then = datetime.fromisoformat(iso_time.replace("Z", "+00:00"))
    secs = (datetime.now(UTC) - then).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{int(secs // size)}{unit} ago"
    return f"{max(0, int(secs))}s ago"
