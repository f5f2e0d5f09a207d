"""One scale-out set-up for every test in this folder (issue 15): starting RabbitMQ nodes
costs 15-35 s each on the shared 2-core machine, so the tests share one.

`scripts/cluster.py` starts it in its own folder on free ports: RabbitMQ nodes (Debian's
rabbitmq-server), a private PostgreSQL and 2 gateway instances. A test that stops or kills
an instance starts it again before it ends (`restart`), so the next test finds both up.
`PLANTY_TEST_RABBIT_NODES` (default 1) sets the number of RabbitMQ nodes;
`PLANTY_TEST_CLUSTER_DIR` names a set-up `bin/cluster start` left running (with
`BIN_CLUSTER_DIR`), which the tests then use and leave running (quicker to iterate).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_asyncio

from tests.stale import own

ROOT = Path(__file__).resolve().parents[3]


def cluster_script() -> ModuleType:
    if "cluster_script" in sys.modules:
        return sys.modules["cluster_script"]
    spec = importlib.util.spec_from_file_location("cluster_script", ROOT / "scripts" / "cluster.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cluster_script"] = module
    spec.loader.exec_module(module)
    return module


@pytest_asyncio.fixture(scope="package")  # stopped once this folder is done
async def cluster() -> AsyncIterator[tuple[ModuleType, Any]]:
    if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        pytest.skip("rabbitmq-server is not installed (bin/setup --dev installs it)")
    kept = os.environ.get("PLANTY_TEST_CLUSTER_DIR")
    if kept:
        os.environ["BIN_CLUSTER_DIR"] = kept
        cl = cluster_script()
        running = cl.Cluster.load(Path(kept))
        assert running is not None, f"no set-up in {kept}"
        yield cl, running
        return
    folder = Path(tempfile.mkdtemp(prefix="planty-cl-", dir="/tmp"))
    own(folder)  # a run killed mid-way: the next one stops this set-up (tests/stale.py)
    folder.chmod(0o755)
    old = os.environ.get("BIN_CLUSTER_DIR")
    os.environ["BIN_CLUSTER_DIR"] = str(folder / "c")
    cl = cluster_script()
    try:
        nodes = int(os.environ.get("PLANTY_TEST_RABBIT_NODES", "1"))
        yield cl, await cl.start(2, nodes=nodes)
    finally:
        for log in sorted((folder / "c").glob("gw*/gateway.log")):  # shown when a test failed
            print(f"--- {log}:\n{log.read_text(errors='replace')[-3000:]}")
        cl.stop()
        shutil.rmtree(folder, ignore_errors=True)
        if old is None:
            os.environ.pop("BIN_CLUSTER_DIR", None)
        else:
            os.environ["BIN_CLUSTER_DIR"] = old


async def restart(cl: ModuleType, c: Any, gw: Any) -> None:
    """Start an instance a test stopped or killed again; the set-up saves its new pid."""
    if not gw.alive():
        cl.gateway_start(gw)
        c.save()
    await cl.wait_healthy(gw)
