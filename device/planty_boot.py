"""The update guard: swap, trial boots and rollback (docs/firmware.md "Updates").

boot.py calls `guard()` before main.py runs. This file and boot.py are never replaced
over the air (the device refuses an offer that names them), so a release that crashes
at boot cannot take the way back with it.

Flash layout: `planty_ota.json` (the state), `ota_new/` (a release being staged),
`ota_prev/` (the files the last update replaced). Every step is a rename, and the state
is written (through a temporary file and a rename) before the step it announces, so a
power cut at any point is finished on the next boot, forward or back.
MicroPython rules as in planty_device.py.
"""

import json
import os

STATE = "planty_ota.json"
NEW = "ota_new"
PREV = "ota_prev"
PROTECTED = ("boot.py", "planty_boot.py", "planty_boot.mpy", STATE, "secrets.json")


def load(d=""):
    """The update state, or {} when there is none (or it is torn)."""
    try:
        with open(d + STATE) as f:
            st = json.loads(f.read())
        return st if isinstance(st, dict) else {}
    except (OSError, ValueError):
        return {}


def save(d, st):
    with open(d + STATE + ".tmp", "w") as f:
        f.write(json.dumps(st))
    os.rename(d + STATE + ".tmp", d + STATE)


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def mkdir(path):
    if not exists(path):
        os.mkdir(path)


def clear(path):
    """Empty a folder (made if missing); ota_prev/ is cleared before a swap starts."""
    mkdir(path)
    for n in os.listdir(path):
        os.remove(path + "/" + n)


def swap(d, names):
    """Staged files in, the current ones to ota_prev/ (cleared first); a re-run finishes it."""
    for n in names:
        new = d + NEW + "/" + n
        if not exists(new):
            continue  # moved in before a power cut
        cur = d + n
        if exists(cur):
            os.rename(cur, d + PREV + "/" + n)
        os.rename(new, cur)


def rollback(d, st, reason):
    """Put the previous files back, forget the release's; the state says why, for the status."""
    for n in st.get("names", ()):
        cur = d + n
        old = d + PREV + "/" + n
        if exists(old):
            if exists(cur):
                os.remove(cur)
            os.rename(old, cur)
        elif exists(cur):
            os.remove(cur)  # the release added it; the previous version had none
    last = {"t": st.get("t"), "release": st.get("release"), "result": "rolled_back"}
    last["reason"] = reason
    done = {"state": "done", "fw": st.get("prev_fw"), "last": last}
    save(d, done)
    print("planty: update %s rolled back: %s" % (st.get("release"), reason))
    return done


def guard(d="", watchdog=None):
    """At boot: finish an interrupted swap, count trial boots, roll back after too many.

    `watchdog(ms)` arms the hardware watchdog during a trial, so a release that crashes
    to the REPL still resets the board and is counted. Returns the state's name.
    """
    st = load(d)
    if st.get("state") == "swapping":
        swap(d, st.get("names", ()))
        st["state"] = "trial"
        st["boots"] = 0
        save(d, st)
    if st.get("state") != "trial":
        return st.get("state")
    st["boots"] = st.get("boots", 0) + 1
    limit = st.get("max_boots", 3)
    if st["boots"] > limit:
        rollback(d, st, "not online after %d boots" % limit)
        return "rolled_back"
    save(d, st)
    print("planty: trying %s, boot %d of %d" % (st.get("release"), st["boots"], limit))
    if watchdog is not None:
        watchdog(st.get("watchdog_ms", 60000))
    return "trial"
