"""The `planty` command (console script `planty_broker.cli.main:main`), one module per
command group: `main` (run, simulate, and where the groups are put together), `devices`,
`commands` (commands and events), `identity` (pairing, API tokens, device credentials),
`rules`, `status`, `backup` (backup, restore); `client` holds what they share (options,
one-line failures, the API client).

May import anything below it (it is a composition root, like `app.py`); nothing in
`src/` imports it.
"""
