"""The web dashboard: server-rendered pages and htmx fragments, live from the event stream.

Pages (`/dashboard/`, `/dashboard/devices/{id}`) are data-free shells that anyone
may load; everything with data comes from fragments under `/dashboard/fragments/`
and the JSON API, both behind the same bearer token as the API. The login form
keeps the token in the tab's sessionStorage and `dashboard.js` sends it with
every request (htmx and fetch alike); the event stream is read with fetch, since
EventSource cannot send a header. Vendored assets (uPlot, htmx) are built by
`package.json` here and committed under static/vendor/.

May import what `northbound` may (and `northbound.api.deps` for the caller's token).
"""
