# Runs before main.py: finishes or rolls back an update (planty_boot.py, docs/firmware.md).
import machine
import planty_boot


def _watchdog(ms):
    machine.WDT(timeout=ms)  # a release that crashes to the REPL is reset and counted


try:
    planty_boot.guard("", _watchdog)
except Exception as e:  # the guard must never stop the board from booting
    print("planty: update guard failed: %s" % e)
