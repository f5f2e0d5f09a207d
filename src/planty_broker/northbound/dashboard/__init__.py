"""The web dashboard: server-rendered pages and htmx fragments, live from the event stream.

Pages (`/dashboard/`, `/dashboard/devices/{id}`) are data-free shells that anyone
may load; everything with data comes from fragments under `/dashboard/fragments/`
and the JSON API, both behind the same bearer token as the API. The login form
keeps the token in the tab's sessionStorage and `dashboard.js` sends it with
every request (htmx and fetch alike); the event stream is read with fetch, since
EventSource cannot send a header. Vendored assets (uPlot, htmx) are built by
`package.json` here and committed under static/vendor/.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

HERE = Path(__file__).parent
STATIC = HERE / "static"


def install_dashboard(app: FastAPI) -> None:
    """Mount the static assets and add the page and fragment routes."""
    from planty_broker.northbound.dashboard.pages import router

    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
    app.include_router(router)
