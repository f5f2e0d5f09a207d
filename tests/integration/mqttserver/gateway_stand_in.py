"""A stand-in gateway process: supervises Mosquitto until it is killed (kill -9 in the tests).

Usage: python gateway_stand_in.py '<json: data_dir, port, internal_port, users, accounts>'
Prints `READY <mosquitto pid>` once Mosquitto accepts logins.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from pathlib import Path

from planty_broker.mqttserver.layout import MosquittoLayout, MqttAccount
from planty_broker.mqttserver.supervisor import MosquittoSupervisor


async def main(cfg: dict[str, object]) -> None:
    layout = MosquittoLayout(
        data_dir=Path(str(cfg["data_dir"])),
        port=int(str(cfg["port"])),
        internal_port=int(str(cfg["internal_port"])),
        public_host="localhost",
    )
    users = dict(cfg["users"])  # type: ignore[call-overload]
    accounts = [MqttAccount(u, h) for u, h in dict(cfg["accounts"]).items()]  # type: ignore[call-overload]

    async def provider() -> Mapping[str, str]:
        return users

    async with MosquittoSupervisor(layout, provider, extra_accounts=accounts) as mqtt:
        print(f"READY {mqtt.pid}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
