"""A simulated board for update tests: flash is a folder, boot runs boot.py's guard, then the app.

The app is whatever `plant_app.py` on flash says (its `VERSION`, and an optional
`setup(dev)`), so an update really changes what the next boot runs. `machine.reset()`
and a crash at boot (the watchdog boot.py armed resets the board) both boot it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import planty_boot
import planty_ota

from tests.device.broker import DeviceEndpoint


class Reboot(Exception):  # noqa: N818 - it is what machine.reset() does
    """machine.reset() on the board."""


def app_source(version: str, body: str = "") -> bytes:
    return f'VERSION = "{version}"\n{body}\n'.encode()


class Board:
    def __init__(
        self,
        endpoint: DeviceEndpoint,
        flash: Path,
        make_device: Callable[..., Any],
        version: str = "1.0.0",
        **device_opts: Any,
    ) -> None:
        self.endpoint = endpoint
        self.flash = flash
        flash.mkdir(parents=True, exist_ok=True)
        if not (flash / "plant_app.py").exists():
            (flash / "plant_app.py").write_bytes(app_source(version))
        self.make_device = make_device
        self.opts = device_opts
        self.device: Any = None
        self.boots = 0
        self.crashes: list[str] = []
        self.guard_said: list[str | None] = []
        self.logs: list[str] = []
        self.running = True
        self._cut = False
        self.error: BaseException | None = None
        self._t = threading.Thread(target=self._main, daemon=True, name="board")

    def _reset(self) -> None:
        raise Reboot

    def power_cut(self) -> None:
        """Off and on again, between two loop passes."""
        self._cut = True

    def boot(self) -> Any:
        d = str(self.flash) + "/"
        self.guard_said.append(planty_boot.guard(d))
        ns: dict[str, Any] = {}
        exec(compile((self.flash / "plant_app.py").read_text(), "plant_app.py", "exec"), ns)
        dev = self.make_device(
            self.endpoint, fw=ns["VERSION"], state_dir=str(self.flash), logs=self.logs, **self.opts
        )
        planty_ota.Updater(dev, reset=self._reset)
        if "setup" in ns:
            ns["setup"](dev)
        return dev

    def _main(self) -> None:
        try:
            while self.running:
                try:
                    dev = self.boot()
                except Exception as exc:  # to the REPL; the watchdog resets the board
                    self.crashes.append(repr(exc))
                    time.sleep(0.05)
                    continue
                self.device = dev
                self.boots += 1
                try:
                    while self.running and not self._cut:
                        dev.step()
                        time.sleep(dev.poll_ms / 1000)
                except Reboot:
                    continue
                if self._cut:  # no DISCONNECT, nothing closed: the next boot finds the flash as is
                    self._cut = False
                    dev._drop()
                    continue
                dev.disconnect()
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Board:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self._t.join(20)
        assert not self._t.is_alive(), "board loop did not stop"
        if self.error is not None:
            raise self.error
