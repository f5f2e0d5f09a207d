"""What every `planty` command group shares: options, one-line failures, the API client.

Everything is printed literally: the consoles interpret no markup, so a message like
`pip install 'planty-broker[postgres]'` keeps its brackets; colour is given as a style.

Exit codes, the same for every command (docs/commands.md, "Exit codes"):
0 done; 1 an error (one line on stderr says why); 2 a bad option (usage);
3 the awaited outcome is final but not a success (a command failed, expired, ...);
4 `--wait` ended before the outcome was final (still queued or sent).
"""

from __future__ import annotations

import errno
import socket
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.text import Text

from planty_broker.config import ConfigError, Settings, load_settings

console = Console(markup=False, highlight=False)
err = Console(stderr=True, markup=False, highlight=False)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # typer's own code for a bad option
EXIT_NOT_DONE = 3  # final, but not a success
EXIT_WAIT_ENDED = 4  # --wait ended before a final state

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="data folder (store, certs, tokens)")
]
UrlOpt = Annotated[str | None, typer.Option("--url", help="gateway API URL (default from config)")]


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One line on stderr, printed literally, then exit with `code`."""
    err.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """A literal warning line on stderr."""
    err.print(Text(message, style="yellow"), soft_wrap=True)


def connect_failure(url: str, exc: BaseException) -> str:
    """Why a connection to `url` failed, in words: name resolution, refused, TLS, or else."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host of {url} ({cause.strerror})"
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            return f"{url} refused the connection: nothing listens there (is `planty run` running?)"
        if isinstance(cause, ssl.SSLError):
            return f"TLS with {url} failed: {cause}"
        if isinstance(cause, (TimeoutError, httpx.TimeoutException)):
            return f"no answer from {url} in time"
        cause = cause.__cause__ or cause.__context__
    return f"cannot connect to {url}: {exc}"


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
        except httpx.ConnectError as exc:
            fail(f"cannot reach the gateway: {connect_failure(self.url, exc)} (or pass --url)")
        except httpx.HTTPError as exc:
            fail(f"request to {self.url} failed: {exc}")
        if r.status_code >= 400:
            try:
                e = r.json()["error"]
                fail(f"{e['message']} ({r.status_code} {e['code']})")
            except (ValueError, KeyError, TypeError):
                fail(f"{r.status_code} from the gateway: {r.text[:200]}")
        return r.json() if r.content else None


def readiness(api: ApiClient) -> dict[str, Any]:
    """The gateway's /readyz body (200 ready, 503 not ready with reasons)."""
    try:
        r = api._client.get("/readyz")
    except httpx.HTTPError as exc:
        fail(f"cannot reach the gateway at {api.url}: {exc}")
    try:
        body: dict[str, Any] = r.json()
    except ValueError:
        fail(f"{r.status_code} from the gateway's /readyz: {r.text[:200]}")
    return body


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
