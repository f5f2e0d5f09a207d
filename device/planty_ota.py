"""Planty over-the-air updates, the device half (docs/protocol.md "Updates", docs/firmware.md).

An `Updater` attached to a `Device` takes an offer (the release's manifest: each file
with its size and sha256) on `devices/{id}/ota`, asks for the files chunk by chunk on
`devices/{id}/ota_ack` (stop and wait: one chunk in RAM at a time), writes them to
`ota_new/`, checks each chunk's digest and each file's sha256, then swaps them in by
renames (planty_boot.py keeps the previous files in `ota_prev/`) and reboots. The new
version is on trial until its status, carrying its version, is acked by the broker;
boot.py rolls it back after `max_boots` boots, this module after `trial_s` seconds.
After a reconnect or a reboot the transfer resumes from what is on flash.
MicroPython rules as in planty_device.py.
"""

import binascii
import gc
import hashlib
import json
import os
import struct
import time

import planty_boot
from planty_boot import NEW, PROTECTED, exists, load, save

V = 1  # the update extension's version, announced in status
HDR = "!BIBI8s"  # chunk frame: kind 1, transfer id, file index, offset, sha256(data)[:8]
HDR_LEN = 18
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"


def _reset():
    import machine

    machine.reset()


def _free_bytes(d):
    try:
        s = os.statvfs(d or "/")
        return s[0] * s[4]
    except (OSError, AttributeError):
        return None


def _check_offer(m, max_chunk, max_files, max_total):
    """The offer's problem as one line, or None when it is good."""
    t = m.get("t")
    rel = m.get("release")
    files = m.get("files")
    chunk = m.get("chunk", max_chunk)
    if not isinstance(t, int) or t <= 0:
        return "t must be a positive integer"
    if not isinstance(rel, str) or not 0 < len(rel) <= 32:
        return "release must be a version string"
    if not isinstance(chunk, int) or not 64 <= chunk <= max_chunk:
        return "chunk must be 64 to %d bytes" % max_chunk
    if not isinstance(files, list) or not 0 < len(files) <= max_files:
        return "files must list 1 to %d files" % max_files
    total = 0
    seen = []
    for f in files:
        if not isinstance(f, dict):
            return "a file is not an object"
        name = f.get("name")
        size = f.get("size")
        sha = f.get("sha256")
        if not isinstance(name, str) or not 0 < len(name) <= 32 or name[0] == ".":
            return "bad file name"
        for ch in name:
            if ch not in _NAME_CHARS:
                return "bad file name " + name
        if name in PROTECTED or name in seen:
            return "file " + name + " may not be updated over the air"
        if not isinstance(size, int) or size < 0:
            return "bad size for " + name
        if not isinstance(sha, str) or len(sha) != 64:
            return "bad sha256 for " + name
        seen.append(name)
        total += size
    if total > max_total:
        return "release is %d bytes, more than %d" % (total, max_total)
    return None


class Updater:
    """Over-the-air updates for one Device: `Updater(dev)` before `dev.run()`."""

    def __init__(
        self, dev, max_chunk=1024, max_files=16, max_total=256 * 1024, reset=_reset, spare=8192
    ):
        self.dev = dev
        self.d = dev._dir
        base = dev.t_cmd[:-3]  # b"planty/v1/devices/{id}/"
        self.t_in = base + b"ota"
        self.t_out = base + b"ota_ack"
        self.max_chunk = max_chunk
        self.max_files = max_files
        self.max_total = max_total
        self.spare = spare  # bytes of flash left free after staging
        self.reset = reset
        self.st = load(self.d)
        self._inbox = []  # at most 2 raw messages, handled in step(), not in the callback
        self._fh = None  # the staged file being written
        self._h = None  # its running sha256
        self._file = 0
        self._off = 0
        self._refused = 0  # chunks refused in a row
        self._born = time.ticks_ms()
        self.peak = 0  # highest gc.mem_alloc() seen while a chunk was in hand (tests, bench)
        if self.st.get("fw"):
            dev.fw = self.st["fw"]  # the release installed last is the version this board runs
        dev.ota = self

    # ------------------------------------------------------------ what the device says
    def status(self):
        """The status's `ota` field: support, and how the last update ended."""
        out = {"v": V, "chunk": self.max_chunk}
        st = self.st
        if st.get("state") == "trial":  # confirmed when this very status is acked
            out["last"] = {"t": st.get("t"), "release": st.get("release"), "result": "applied"}
        elif st.get("last"):
            out["last"] = st["last"]
        return out

    def online(self):
        """The status carrying the new version was acked: the trial is over, it stays."""
        st = self.st
        if st.get("state") == "trial":
            last = {"t": st.get("t"), "release": st.get("release"), "result": "applied"}
            self.st = {"state": "done", "fw": st.get("release"), "last": last}
            save(self.d, self.st)
            self.dev.log("planty: update %s confirmed" % st.get("release"))

    def _say(self, msg):
        if self.dev._c is not None:
            self.dev._publish(self.t_out, json.dumps(msg).encode())

    # ------------------------------------------------------------ the loop
    def receive(self, msg):
        if len(self._inbox) < 2:
            self._inbox.append(msg)  # more: dropped, the broker re-sends after its timeout

    def step(self, now):
        st = self.st
        if st.get("state") == "trial":
            limit = st.get("trial_s", 300)
            if time.ticks_diff(now, self._born) > limit * 1000:
                self.dev.disconnect()
                self.st = planty_boot.rollback(self.d, st, "not online within %d s" % limit)
                self.reset()
            return
        while self._inbox and self.dev._c is not None:
            msg = self._inbox.pop(0)
            if msg and msg[0] == 1:
                self._chunk(msg)
            else:
                self._control(msg)
            msg = None

    def _control(self, raw):
        try:
            m = json.loads(raw)
            op = m["op"]
        except (ValueError, KeyError, TypeError):
            self.dev.log("planty: ignored an update message that is not {op, ...}")
            return
        if op == "offer":
            self._offer(m)
        elif op == "abort" and m.get("t") == self.st.get("t"):
            self._abort("aborted by the broker")

    # ------------------------------------------------------------ staging
    def _offer(self, m):
        t = m.get("t")
        why = _check_offer(m, self.max_chunk, self.max_files, self.max_total)
        if why is not None:
            self.dev.log("planty: update offer refused: " + why)
            self._say({"t": t, "op": "failed", "reason": "bad offer: " + why})
            return
        st = self.st
        if st.get("state") == "staging" and st.get("t") == t:
            if self._fh is None:
                self._resume()
            self._next()
            return
        if m["release"] == self.dev.fw:
            self._say({"t": t, "op": "applied", "fw": self.dev.fw})
            return
        self._close()
        planty_boot.clear(self.d + NEW)
        need = 0
        for f in m["files"]:
            need += f["size"]
        free = _free_bytes(self.d)
        if free is not None and free < need + self.spare:
            self._say({"t": t, "op": "failed", "reason": "no space: %d bytes free" % free})
            return
        names = [f["name"] for f in m["files"]]
        self.st = {
            "state": "staging",
            "t": t,
            "release": m["release"],
            "chunk": m.get("chunk", self.max_chunk),
            "files": [[f["name"], f["size"], f["sha256"]] for f in m["files"]],
            "names": names,
            "done": 0,
            "trial_s": m.get("trial_s", 300),
            "max_boots": m.get("max_boots", 3),
            "prev_fw": self.dev.fw,
            "last": st.get("last"),
        }
        save(self.d, self.st)
        self.dev.log("planty: update to %s offered, %d files" % (m["release"], len(names)))
        self._file = 0
        self._open(0)
        self._next()

    def _path(self, i):
        return self.d + NEW + "/" + self.st["files"][i][0]

    def _open(self, off):
        """Open the current file for writing at `off`; the hash covers what is before it."""
        self._h = hashlib.sha256()
        path = self._path(self._file)
        if off:
            with open(path, "rb") as f:  # re-hash what a previous boot or link wrote
                left = off
                while left:
                    b = f.read(min(512, left))
                    if not b:
                        off -= left
                        break
                    self._h.update(b)
                    left -= len(b)
            self._fh = open(path, "r+b")  # noqa: SIM115 - open across chunks, closed in _close
            self._fh.seek(off)
        else:
            self._fh = open(path, "wb")  # noqa: SIM115 - open across chunks, closed in _close
        self._off = off

    def _resume(self):
        """After a reboot: the verified files are kept, the partial one from a chunk boundary."""
        self._file = self.st.get("done", 0)
        if self._file >= len(self.st["files"]):
            self._staged()
            return
        size = 0
        path = self._path(self._file)
        if exists(path):
            size = os.stat(path)[6]
        chunk = self.st["chunk"]
        self._open(min(size, self.st["files"][self._file][1]) // chunk * chunk)

    def _close(self):
        if self._fh is not None:
            self._fh.close()
        self._fh = None
        self._h = None

    def _next(self, err=None):
        msg = {"t": self.st["t"], "op": "next", "file": self._file, "offset": self._off}
        if err:
            msg["err"] = err
        self._say(msg)

    def _chunk(self, m):
        st = self.st
        if len(m) < HDR_LEN or st.get("state") != "staging":
            return
        _, t, fi, off, dig = struct.unpack_from(HDR, m, 0)
        if t != st["t"] or self._fh is None:
            return
        if fi != self._file or off != self._off:
            self._next()  # a re-send of what we have, or out of order: say where we are
            return
        data = memoryview(m)[HDR_LEN:]
        name, size, sha = st["files"][fi]
        end = off + len(data)
        if hashlib.sha256(data).digest()[:8] != dig or end > size:
            self._refused += 1
            self.dev.log("planty: update chunk %s@%d refused (digest)" % (name, off))
            if self._refused > 8:
                self._fail("chunk %s@%d refused 8 times" % (name, off))
            else:
                self._next("digest")
            return
        self._refused = 0
        self._fh.write(data)
        self._h.update(data)
        self._off = end
        self.peak = max(self.peak, gc.mem_alloc())
        data = None
        if end < size:
            self._next()
            return
        self._fh.close()
        self._fh = None
        if binascii.hexlify(self._h.digest()).decode() != sha:
            self.dev.log("planty: update file %s: sha256 mismatch, fetching it again" % name)
            self._refused += 1
            if self._refused > 2:
                self._fail("sha256 mismatch on " + name)
                return
            self._open(0)
            self._next("sha256")
            return
        self._file += 1
        st["done"] = self._file
        save(self.d, st)
        if self._file < len(st["files"]):
            self._open(0)
            self._next()
        else:
            self._staged()

    def _fail(self, reason):
        self._say({"t": self.st.get("t"), "op": "failed", "reason": reason})
        self._abort(reason)

    def _abort(self, reason):
        self._close()
        planty_boot.clear(self.d + NEW)
        last = {"t": self.st.get("t"), "release": self.st.get("release"), "result": "failed"}
        last["reason"] = reason
        self.st = {"state": "done", "fw": self.dev.fw, "last": last}
        save(self.d, self.st)
        self.dev.log("planty: update abandoned: " + reason)

    # ------------------------------------------------------------ the switch
    def _staged(self):
        """Every file checked: say so, swap them in, reboot into the trial."""
        st = self.st
        self._say({"t": st["t"], "op": "staged"})
        self.dev.log("planty: update %s staged, switching" % st["release"])
        planty_boot.clear(self.d + planty_boot.PREV)
        st["state"] = "swapping"
        save(self.d, st)
        planty_boot.swap(self.d, st["names"])
        st["state"] = "trial"
        st["boots"] = 0
        del st["files"]
        save(self.d, st)
        self.dev.disconnect()
        self.reset()
