"""Planty device commands (PROTOCOL.md v1): dispatch, ack, dedup by id, deadlines, auto-off.

Kept apart from the connection code so each file stays small; `Device` owns one
`Commands` and publishes the ack bytes it returns. MicroPython rules as in
planty_device.py: no f-strings, no typing, nothing CPython-only.
"""

import json
import os
import time


def load_json(path, default):
    """A JSON file's value, or `default` when it is missing or torn."""
    try:
        with open(path) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return default


def store_json(path, value):
    """Write through a temporary file and rename, so a reset never leaves half a file."""
    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(value))
    os.rename(path + ".tmp", path)


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Commands:
    """Actions by name; answers each command once and remembers the answer by id."""

    def __init__(self, device, ids_path, remember=16):
        self.dev = device
        self.actions = {}  # "pump.on" -> handler(args) -> result dict or None
        self.actuators = {}  # actuator name -> last state (0/1, or the value set)
        self.timers = {}  # actuator name -> ticks_ms at which it switches itself off
        self._path = ids_path
        self._remember = remember
        self._seen = load_json(ids_path, [])  # [[cmd id, ack text], ...], oldest first
        if not isinstance(self._seen, list):
            self._seen = []

    def register(self, name, fn):
        self.actions[name] = fn
        dot = name.rfind(".")
        if dot > 0 and name[:dot] not in self.actuators:
            self.actuators[name[:dot]] = 0

    def handle(self, raw, now_ms):
        """Answer one `cmd` payload: the ack bytes to publish, or None if it has no id."""
        try:
            cmd = json.loads(raw)
            cid = cmd["id"]
            action = cmd["action"]
        except (ValueError, KeyError, TypeError, IndexError):
            self.dev.log("planty: ignored a command that is not {id, action}")
            return None
        for seen_id, text in self._seen:
            if seen_id == cid:  # a re-send: same answer again, nothing runs twice
                self.dev.log("planty: %s again, answered as before" % cid)
                return text.encode()
        args = cmd.get("args") or {}
        exp = cmd.get("exp")
        if _number(exp) and now_ms is not None and now_ms > exp:
            self.dev.log("planty: %s %s expired, not run" % (cid, action))
            ack = {"id": cid, "ok": False, "error": "expired"}
        else:
            ack = self._run(cid, action, args)
        text = json.dumps(ack)
        self._seen.append([cid, text])
        if len(self._seen) > self._remember:
            self._seen.pop(0)
        store_json(self._path, self._seen)
        return text.encode()

    def _run(self, cid, action, args):
        try:
            if action == "ping":
                result = None
            elif action == "read":
                result = {"readings": self.dev.read(), "actuators": self.actuators}
            elif action == "config":
                result = self._config(args)
            else:
                result = self._actuate(action, args)
        except Exception as e:  # a handler's failure is the command's answer, not a crash
            self.dev.log("planty: %s %s failed: %s" % (cid, action, e))
            return {"id": cid, "ok": False, "error": str(e) or e.__class__.__name__}
        self.dev.log("planty: %s %s done" % (cid, action))
        ack = {"id": cid, "ok": True}
        if result is not None:
            ack["result"] = result
        return ack

    def _config(self, args):
        n = args.get("interval_s")
        if not _number(n) or not 1 <= n <= 86400:
            raise ValueError("config needs interval_s between 1 and 86400")
        self.dev.set_interval(n)
        return {"interval_s": n}

    def _actuate(self, action, args):
        fn = self.actions.get(action)
        if fn is None:
            raise ValueError("unknown action " + action)
        dot = action.rfind(".")
        name = action[:dot]
        verb = action[dot + 1 :]
        secs = args.get("seconds") if verb == "on" else None
        if secs is not None:
            if not _number(secs) or secs <= 0:
                raise ValueError("seconds must be a positive number")
            if name + ".off" not in self.actions:
                raise ValueError("on with seconds needs a " + name + ".off action")
        result = fn(args)
        if dot > 0:
            self.timers.pop(name, None)  # a new on/off/set replaces a running countdown
            if verb == "on":
                self.actuators[name] = 1
            elif verb == "off":
                self.actuators[name] = 0
            elif verb == "set":
                self.actuators[name] = args.get("value")
            if secs is not None:
                self.timers[name] = time.ticks_add(time.ticks_ms(), int(secs * 1000))
        return result

    def tick(self, now):
        """Switch off every actuator whose seconds ran out (no command needed)."""
        if not self.timers:
            return
        for name in list(self.timers):
            if time.ticks_diff(now, self.timers[name]) >= 0:
                del self.timers[name]
                try:
                    self.actions[name + ".off"]({})
                    self.actuators[name] = 0
                    self.dev.log("planty: %s off, its seconds ran out" % name)
                except Exception as e:
                    self.dev.log("planty: %s.off failed: %s" % (name, e))
