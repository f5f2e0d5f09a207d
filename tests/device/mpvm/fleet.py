# Runs inside real MicroPython: boards with the device code, on real sockets (net.mjs), until the
# host creates cfg["stop"]. A board's flash is a folder; a reboot runs boot.py's guard, then
# whatever plant_app.py on its flash says. Prints RESULT {...} as JSON at the end.
import gc
import json
import os
import sys

sys.path.insert(0, "/lib")
import socket as net

import planty_boot
import planty_device
import planty_ota

with open("/cfg.json") as f:
    CFG = json.loads(f.read())


class Reboot(Exception):
    pass


def reset():
    raise Reboot()


def used():
    gc.collect()
    return gc.mem_alloc()


class Board:
    def __init__(self, i, did, token):
        self.d = "/b%d/" % i
        os.mkdir(self.d[:-1])
        with open(self.d + "plant_app.py", "w") as f:
            f.write('VERSION = "%s"\n' % CFG["version"])
        self.did = did
        self.token = token
        self.dev = None
        self.boots = 0
        self.crashes = []
        self.logs = []
        self.peak = 0  # highest gc.mem_alloc() with a chunk in hand, over every boot

    def log(self, line):
        if len(self.logs) < 200:
            self.logs.append(line)

    def boot(self):
        planty_boot.guard(self.d)
        ns = {}
        with open(self.d + "plant_app.py") as f:
            exec(f.read(), ns)
        dev = planty_device.Device(
            self.did,
            self.token,
            CFG["host"],
            CFG["port"],
            CFG["ca_pem"],
            fw=ns["VERSION"],
            state_dir=self.d,
            keepalive=30,
            backoff_ms=(100, 800),
            poll_ms=5,
            io_timeout_s=5,
            ring_size=8,
            log=self.log,
        )
        planty_ota.Updater(dev, reset=reset, max_chunk=CFG.get("max_chunk", 1024))
        if "setup" in ns:
            ns["setup"](dev)
        self.dev = dev
        self.boots += 1


R = {"boards": []}
boards = [Board(i, d[0], d[1]) for i, d in enumerate(CFG["devices"])]
HEAP = CFG.get("heap")
# idle: the live heap of the connected board on the last pass before its update began (the
# baseline of the update's own cost; it was one sample after 50 passes, which a loaded host
# could reach only after the update had begun: then it stayed None).
H = {"idle": None, "peak_live": 0, "samples": 0, "pass_alloc_max": 0}
passes = 0


def tick():
    """One pass over every board; run.mjs calls it again and again, each a top-level call.

    This build collects garbage only at the top level (between calls), so gc.mem_alloc() at
    the start of a call is the live heap, exactly. Returns True when the host says stop.
    """
    global passes
    staging = False
    if HEAP and boards[0].dev is not None:
        live = gc.mem_alloc()
        staging = boards[0].dev.ota.st.get("state") == "staging"
        if staging:
            H["peak_live"] = max(H["peak_live"], live)
            H["samples"] += 1
        elif boards[0].dev.connected() and H["samples"] == 0:
            H["idle"] = live
    for b in boards:
        if b.dev is None:
            try:
                b.boot()
            except Exception as e:  # to the REPL on a board; the watchdog resets it
                b.crashes.append("%s: %s" % (e.__class__.__name__, e))
            continue
        try:
            b.dev.step()
        except Reboot:
            b.peak = max(b.peak, b.dev.ota.peak)
            b.dev = None
    if staging:  # all this pass allocated (nothing is freed inside a call): its transient, at most
        H["pass_alloc_max"] = max(H["pass_alloc_max"], gc.mem_alloc() - live)
    passes += 1
    gc.collect()  # done by the VM when this call returns
    if passes % 20 == 0 and net.call({"op": "exists", "path": CFG["stop"]})["yes"]:
        finish()
        return True
    net.sleep_ms(CFG.get("poll_ms", 5))
    return False


def finish():
    for b in boards:
        R["boards"].append(
            {
                "id": b.did,
                "boots": b.boots,
                "crashes": b.crashes,
                "fw": b.dev.fw if b.dev else None,
                "logs": b.logs[-30:],
            }
        )
    R["ussl_lent"] = sys.modules.get("ussl") is planty_device._Ussl
    if HEAP:
        R["heap"] = H
    R["passes"] = passes
    print("RESULT " + json.dumps(R))
