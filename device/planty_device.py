"""Planty device client for MicroPython on ESP32: PROTOCOL.md v1 on top of umqtt.simple.

One `Device` speaks the whole device half of the contract: TLS + token login with a
retained last will, retained status on every connect, telemetry with `seq` (and `ts`
when the clock is set), commands with ack, dedup by id (kept in a small file, so a
reconnect or a reboot does not run a command twice), deadlines, the built-in
`ping`/`read`/`config`, and actuators that switch themselves off after `seconds`.
On a flaky link it reconnects with backoff and keeps unsent readings in a bounded
ring buffer that is sent in order after the reconnect. Runs unchanged under CPython
with thin shims (see tests/device/shims), which is how it is tested.
MicroPython rules kept here: no f-strings, no typing, no dataclasses, no CPython-only
builtins; payloads are bytes built once per message.
"""

import gc
import json
import random
import time

from planty_cmds import Commands, load_json, store_json
from umqtt.simple import MQTTClient, MQTTException

try:
    import ssl
except ImportError:  # a build without TLS: a device with ca_pem logs why it cannot connect
    ssl = None

VERSION = "1.0.0"
_UNIX_2000_MS = 946684800000  # ESP32 MicroPython counts time from 2000-01-01
_CLOCK_SANE_MS = 1600000000000  # before Sept 2020: the RTC was never set
_REFUSED = {
    1: "bad protocol",
    2: "client id refused",
    3: "server unavailable",
    4: "bad device_id or token",
    5: "not authorized",
}
# The clean-shutdown goodbye (docs/protocol.md, status): retained, so it replaces the
# "online" status; the broker records a clean offline, never the last will.
_GOODBYE = b'{"online": false, "reason": "shutdown"}'
_NET_ERRORS = (OSError, MQTTException, AssertionError, IndexError, TypeError, ValueError)


def pem_to_der(pem):
    """The first certificate of a PEM text as DER bytes (what mbedtls and CPython both take)."""
    import binascii

    if isinstance(pem, bytes):
        pem = pem.decode()
    start = pem.find("-----BEGIN CERTIFICATE-----")
    end = pem.find("-----END CERTIFICATE-----")
    if start < 0 or end < 0:
        raise ValueError("ca_pem holds no PEM certificate")
    body = pem[start + 27 : end].replace("\n", "").replace("\r", "").replace(" ", "")
    return binascii.a2b_base64(body.encode())


class _Sock:
    """Wraps the connected socket: notes traffic (for liveness), bounds blocking reads, and
    sends each MQTT packet as one write.

    umqtt.simple writes a packet in 3-5 pieces; with Nagle's algorithm on (lwIP's default)
    the pieces after the first wait for the broker's delayed ACK, about 40 ms per publish.
    So writes are kept and go out together before the next read (umqtt.simple reads after
    every packet it needs answered) or close.
    """

    def __init__(self, sock, dev):
        self.s = sock
        self.d = dev
        self._out = []

    def _flush(self):
        if self._out:
            out = self._out
            self._out = []
            self.s.write(out[0] if len(out) == 1 else b"".join(out))

    def read(self, n):
        self._flush()
        b = self.s.read(n)
        if b:
            self.d._heard = time.ticks_ms()
            self.d._rx += 1
        return b

    def write(self, buf, n=None):
        self.d._said = time.ticks_ms()
        if isinstance(buf, str):
            buf = buf.encode()
        self._out.append(
            bytes(buf) if n is None else bytes(memoryview(buf)[:n])
        )  # umqtt reuses its buffers
        return len(buf) if n is None else n

    def setblocking(self, flag):
        if flag and self.d.io_timeout_s:
            try:  # a dead link then raises instead of blocking for ever
                self.s.settimeout(self.d.io_timeout_s)
                return
            except (AttributeError, OSError):
                pass
        self.s.setblocking(flag)

    def close(self):
        try:
            self._flush()
        finally:
            self.s.close()


class Device:
    """One plant device: register sensors and actions, then `run()` (or `run_once()` + sleep)."""

    def __init__(
        self,
        device_id,
        token,
        host,
        port=8883,
        ca_pem=None,
        prefix="planty/v1",
        fw=VERSION,
        interval_s=60,
        keepalive=60,
        ring_size=32,
        slot_bytes=192,
        dedup_size=16,
        state_dir="",
        backoff_ms=(1000, 60000),
        io_timeout_s=15,
        poll_ms=50,
        link_up=None,
        rssi=None,
        on_event=None,
        log=print,
        endpoints=None,
    ):
        self.device_id = device_id
        self.token = token
        self.host = host
        self.port = port
        # A cluster (docs/scale-out.md): more (host, port) pairs; a connect that cannot reach
        # one moves to the next, round robin.
        # The list may hold host:port itself (the gateway gives every node): tried once.
        self._eps = [(host, port)]
        for e in endpoints or ():
            if (e[0], int(e[1])) not in self._eps:
                self._eps.append((e[0], int(e[1])))
        self._ep = 0
        self.ca_der = pem_to_der(ca_pem) if ca_pem else None
        base = prefix + "/devices/" + device_id + "/"
        self.t_status = (base + "status").encode()
        self.t_tele = (base + "telemetry").encode()
        self.t_cmd = (base + "cmd").encode()
        self.t_ack = (base + "ack").encode()
        self.fw = fw
        self.keepalive = keepalive
        self.io_timeout_s = io_timeout_s
        self.poll_ms = poll_ms
        self.backoff_min, self.backoff_max = backoff_ms
        self.link_up = link_up
        self.rssi = rssi
        self.on_event = on_event
        self.log = log
        self.sensors = []  # (name, read function)
        self.running = True
        self.seq = 0
        self.dropped = 0  # readings lost because the ring buffer was full
        # Unsent readings live in one buffer allocated at boot: ring_size slots of slot_bytes,
        # so the RAM they take is fixed and the heap does not fragment during a long outage.
        self._size = ring_size
        self._slot = slot_bytes
        self._arena = bytearray(ring_size * slot_bytes)
        self._lens = [0] * ring_size
        self._head = 0
        self._count = 0
        self._pending = []  # raw cmd payloads received, handled in the loop, not in the callback
        self.ota = None  # a planty_ota.Updater attaches itself here
        self._c = None
        self._heard = self._said = self._rx = 0
        self._delay = 0
        self._timeout_kw = True
        self._wifi = True
        self._next_try = time.ticks_ms()
        self._next_sample = time.ticks_ms()
        self._epoch_ms = _UNIX_2000_MS if time.gmtime(0)[0] == 2000 else 0
        self._dir = state_dir + "/" if state_dir and not state_dir.endswith("/") else state_dir
        state = load_json(self._dir + "planty_state.json", {})
        self.boot = state.get("boot", 0) + 1
        self.interval_s = state.get("interval_s", interval_s)  # a `config` command outlives reboots
        self._save_state()
        self.cmds = Commands(self, self._dir + "planty_ids.json", dedup_size)
        self._restore_backlog()

    @classmethod
    def from_secrets(cls, secrets, **opts):
        """A Device from the dict `load_secrets()` returns; `opts` are the other arguments."""
        m = secrets["mqtt"]
        if "endpoints" not in opts:
            opts["endpoints"] = m.get("endpoints")  # more nodes of a cluster: [[host, port]]
        return cls(
            secrets["device_id"],
            secrets["token"],
            m["host"],
            m.get("port", 8883),
            m.get("ca_pem"),
            prefix=m.get("prefix", "planty/v1"),
            **opts,
        )

    # ------------------------------------------------------------ registration
    def sensor(self, name):
        """Decorator: `fn()` returns the reading (a number) or None to skip it this time."""

        def register(fn):
            self.sensors.append((name, fn))
            return fn

        return register

    def action(self, name):
        """Decorator: `fn(args)` runs the action; raise to fail it, return a dict as its result."""

        def register(fn):
            self.cmds.register(name, fn)
            return fn

        return register

    # ------------------------------------------------------------ clock and files
    def now_ms(self):
        """Unix time in ms, or None while the clock was never set (no NTP yet)."""
        ms = time.time_ns() // 1000000 + self._epoch_ms
        return ms if ms > _CLOCK_SANE_MS else None

    def _save_state(self):
        store_json(
            self._dir + "planty_state.json", {"boot": self.boot, "interval_s": self.interval_s}
        )

    def set_interval(self, seconds):
        """New telemetry period (the `config` command): kept in a file, announced in status."""
        self.interval_s = seconds
        self._save_state()
        self._next_sample = time.ticks_ms()
        if self._c:
            self._publish(self.t_status, self._status(), retain=True)

    def _event(self, name):
        if self.on_event:
            self.on_event(name)

    # ------------------------------------------------------------ readings
    def read(self):
        """Every registered sensor now, as {name: number}; a failing sensor is left out."""
        out = {}
        for name, fn in self.sensors:
            try:
                v = fn()
            except Exception as e:  # one broken sensor must not stop the others
                self.log("planty: sensor %s failed: %s" % (name, e))
                continue
            if v is not None:
                out[name] = v
        return out

    def sample(self, readings=None):
        """Take one reading, give it the next seq (and ts), queue it for sending; returns seq."""
        msg = {
            "seq": self.seq,
            "boot": self.boot,  # with seq, the message's identity: stored once
            "readings": self.read() if readings is None else readings,
        }
        ts = self.now_ms()
        if ts is not None:
            msg["ts"] = ts
        self._push(json.dumps(msg).encode())
        self.seq += 1
        return self.seq - 1

    def _push(self, payload):
        n = len(payload)
        if n > self._slot:
            self.log(
                "planty: a %d-byte reading does not fit slot_bytes=%d; dropped" % (n, self._slot)
            )
            self.dropped += 1
            return
        size = self._size
        if self._count == size:  # full: the oldest reading is lost, the newest kept
            self._head = (self._head + 1) % size
            self._count -= 1
            self.dropped += 1
        i = (self._head + self._count) % size
        off = i * self._slot
        self._arena[off : off + n] = payload
        self._lens[i] = n
        self._count += 1

    def _entry(self, k):
        """The k-th oldest unsent reading, as a view into the ring buffer (no copy)."""
        i = (self._head + k) % self._size
        off = i * self._slot
        return memoryview(self._arena)[off : off + self._lens[i]]

    def backlog(self):
        """How many readings wait to be sent."""
        return self._count

    def _flush(self):
        while self._count and self._c:
            if not self._publish(self.t_tele, self._entry(0)):
                return
            self._head = (self._head + 1) % self._size
            self._count -= 1
            self._event("sent")

    # ------------------------------------------------------------ connection
    def connected(self):
        return self._c is not None

    def _status(self):
        acts = list(self.cmds.actuators)
        st = {
            "online": True,
            "fw": self.fw,
            "boot": self.boot,
            "interval_s": self.interval_s,
            "sensors": [n for n, _ in self.sensors],
            "actuators": acts,
        }
        if self.rssi:
            try:
                st["rssi"] = self.rssi()
            except Exception:  # noqa: S110 - rssi is optional decoration
                pass
        if self.ota is not None:
            st["ota"] = self.ota.status()
        st["heap"] = gc.mem_free()
        return json.dumps(st).encode()

    def _tls(self, c):
        if self.ca_der is None:
            return
        if ssl is None:
            raise ImportError("this MicroPython build has no ssl module")
        if hasattr(c, "ssl_params"):  # umqtt.simple 1.3.x: ussl.wrap_socket(sock, **ssl_params)
            c.ssl_params = {
                "cert_reqs": ssl.CERT_REQUIRED,
                "cadata": self.ca_der,
                "server_hostname": self.host,
            }
            _lend_ussl()
        else:  # umqtt.simple >= 1.4: an SSLContext in c.ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=self.ca_der)
            c.ssl = ctx

    def connect(self):
        """One attempt: CONNECT with the will, retained status, subscribe. True when online.

        Never raises (but for KeyboardInterrupt/SystemExit): whatever goes wrong is one log
        line and a retry after the backoff, so a library mismatch cannot kill main.py.
        """
        self._drop()
        gc.collect()
        self._event("connecting")
        c = None
        try:
            c = MQTTClient(
                self.device_id,
                self.host,
                self.port,
                self.device_id,
                self.token,
                self.keepalive,
                ssl=self.ca_der is not None,
            )
            self._tls(c)
            c.set_last_will(self.t_status, b'{"online": false}', retain=True, qos=1)
            c.set_callback(self._on_msg)
            self._connect(c)
            c.sock = _Sock(c.sock, self)
            self._heard = self._said = time.ticks_ms()
            self._c = c
            for topic in self._topics():  # first, so "online" means commands are heard
                c.subscribe(topic, qos=1)
            c.publish(self.t_status, self._status(), retain=True, qos=1)
        except MQTTException as e:
            code = e.args[0] if e.args else 0
            self.log(
                "planty: broker refused %s (code %s: %s); check device_id and token"
                % (self.device_id, code, _REFUSED.get(code, "?"))
            )
            self._event("refused")
            self._drop(c)
            self._delay = self.backoff_max
            return False
        except _NET_ERRORS as e:
            self.log("planty: cannot reach %s:%s (%s)" % (self.host, self.port, _why(e)))
            self._event("unreachable")
            self._drop(c)
            self._ep = (self._ep + 1) % len(self._eps)
            self.host, self.port = self._eps[self._ep]
            return False
        except Exception as e:  # ImportError, MemoryError, a library bug: never fatal
            self.log(
                "planty: connect to %s:%s failed: %s; will retry (firmware or umqtt.simple"
                " mismatch? see docs/firmware.md)" % (self.host, self.port, _why(e))
            )
            self._event("unreachable")
            self._drop(c)
            return False
        self._delay = 0
        self.log(
            "planty: online as %s at %s:%s, boot %d"
            % (self.device_id, self.host, self.port, self.boot)
        )
        self._event("connected")
        self._online()
        return True

    def _topics(self):
        return (self.t_cmd,) if self.ota is None else (self.t_cmd, self.ota.t_in)

    def _online(self):
        if self.ota is not None:
            self.ota.online()  # the status with this version was acked: a trial is confirmed

    def _connect(self, c):
        if self._timeout_kw:  # umqtt.simple >= 1.5 bounds the TCP connect and TLS handshake
            try:
                c.connect(clean_session=True, timeout=self.io_timeout_s)
                return
            except TypeError:
                self._timeout_kw = False
                self._drop(c)
        c.connect(clean_session=True)

    def _drop(self, c=None):
        c = c or self._c
        self._c = None
        if c is not None and getattr(c, "sock", None) is not None:
            try:
                c.sock.close()
            except OSError:
                pass

    def shutdown(self):
        """Clean shutdown (docs/protocol.md): the retained goodbye, its PUBACK, DISCONNECT.

        The broker then records a clean offline (cause `shutdown`) instead of the last
        will. True when the goodbye was acknowledged. `run()` ends with it; call it
        yourself before powering down on purpose (not before deep sleep: a sleeping board
        stays "online" and is judged by interval_s).
        """
        said = self._c is not None and self._publish(self.t_status, _GOODBYE, retain=True)
        if said:
            self.log("planty: said goodbye, disconnecting")
        self.disconnect()
        return said

    def disconnect(self):
        """Clean DISCONNECT: the will does not fire (use before deep sleep)."""
        if self._c:
            try:
                self._c.disconnect()
            except _NET_ERRORS:
                pass
        self._c = None

    def _lost(self, why):
        if self._c:
            self.log("planty: link lost (%s); %d readings kept" % (why, self._count))
            self._event("lost")
        self._drop()
        self._next_try = time.ticks_ms()

    def _publish(self, topic, payload, retain=False):
        try:
            self._c.publish(topic, payload, retain=retain, qos=1)  # returns after the PUBACK
            return True
        except _NET_ERRORS as e:
            self._lost(_why(e))
            return False

    def _backoff(self):
        self._delay = min(self.backoff_max, max(self.backoff_min, self._delay * 2))
        wait = self._delay // 2 + random.getrandbits(16) % (self._delay // 2 + 1)
        self._next_try = time.ticks_add(time.ticks_ms(), wait)
        self.log("planty: retry in %d ms" % wait)

    def _service(self, now):
        """Read what the broker sent, keep the session alive, notice a dead link."""
        try:
            for _ in range(8):  # drain what arrived, a bounded number per pass
                before = self._rx
                self._c.check_msg()
                if self._rx == before:
                    break
            if self.keepalive and time.ticks_diff(now, self._said) >= self.keepalive * 500:
                self._c.ping()
        except _NET_ERRORS as e:
            self._lost(_why(e))
            return
        if self.keepalive and time.ticks_diff(time.ticks_ms(), self._heard) > self.keepalive * 1500:
            self._lost("no answer from broker")

    # ------------------------------------------------------------ commands
    def _on_msg(self, topic, msg):
        if self.ota is not None and topic == self.ota.t_in:
            self.ota.receive(msg)
            return
        if topic != self.t_cmd:
            return
        if len(self._pending) < 8:
            self._pending.append(msg)
        else:  # the broker re-sends a command that is never acked
            self.log("planty: busy, dropped a command")

    # ------------------------------------------------------------ loops
    def step(self):
        """One pass of the loop; never blocks longer than one network operation."""
        now = time.ticks_ms()
        self.cmds.tick(now)
        if time.ticks_diff(now, self._next_sample) >= 0:
            self.sample()
            self._next_sample = time.ticks_add(now, int(self.interval_s * 1000))
        if self.link_up is not None and not self.link_up():
            if self._c:
                self._lost("wifi down")
            if self._wifi:
                self._wifi = False
                self.log("planty: wifi down, %d readings kept" % self._count)
                self._event("wifi_down")
            return
        self._wifi = True
        if self._c is None and time.ticks_diff(now, self._next_try) >= 0 and not self.connect():
            self._backoff()
        if self._c:
            self._service(now)
        self._commands()
        if self.ota is not None:
            self.ota.step(now)
        if self._c:
            self._flush()

    def _commands(self):
        while self._pending and self._c:
            ack = self.cmds.handle(self._pending.pop(0), self.now_ms())
            if ack is not None:
                self._event("cmd")
                self._publish(self.t_ack, ack)

    def run(self):
        """Until `running` is False: sample every interval_s, send, obey commands; then say
        goodbye (`shutdown()`), so the broker records a clean offline."""
        while self.running:
            self.step()
            time.sleep_ms(self.poll_ms)
        self.shutdown()

    def run_once(self, listen_ms=2000, tries=3):
        """A deep-sleep wake: sample, connect, send all, take commands for listen_ms, disconnect.

        Returns True when nothing is left unsent. Stays awake while an actuator timer runs,
        so the board never sleeps with the pump on.
        """
        self.sample()
        for _ in range(tries):
            if self._c or self.connect():
                break
            time.sleep_ms(self.backoff_min)
        start = time.ticks_ms()
        cmds = self.cmds
        while cmds.timers or (self._c and time.ticks_diff(time.ticks_ms(), start) < listen_ms):
            if self._c:
                self._flush()
                self._service(time.ticks_ms())
            self._commands()
            cmds.tick(time.ticks_ms())
            time.sleep_ms(self.poll_ms)
        if self._c:
            self._flush()
        self.disconnect()
        return self._count == 0

    def deep_sleep(self, ms):
        """Keep the unsent readings in a file and deep-sleep; the board reboots on wake."""
        self._save_backlog()
        import machine

        machine.deepsleep(ms)

    def _save_backlog(self):
        items = []
        for i in range(self._count):
            items.append(str(bytes(self._entry(i)), "utf-8"))
        store_json(self._dir + "planty_backlog.json", items)

    def _restore_backlog(self):
        items = load_json(self._dir + "planty_backlog.json", [])
        for text in items:  # old seq belonged to the last boot: number them anew, keep ts
            try:
                msg = json.loads(text)
            except ValueError:
                continue
            msg["seq"] = self.seq
            if "boot" in msg:
                msg["boot"] = self.boot
            self.seq += 1
            self._push(json.dumps(msg).encode())
        if items:
            store_json(self._dir + "planty_backlog.json", [])


def load_secrets(path="secrets.json"):
    """The provisioning file `planty devices add ID --export-device-config` writes, checked.

    Raises ValueError with one line saying what is wrong and what to do.
    """
    try:
        with open(path) as f:
            s = json.loads(f.read())
    except OSError:
        raise ValueError("no " + path + " on the board: copy the file the gateway CLI exported")
    except ValueError:
        raise ValueError(path + " is not valid JSON: export it again with the gateway CLI")
    if not isinstance(s, dict):
        raise ValueError(path + " must hold a JSON object")
    for key in ("device_id", "token", "mqtt", "wifi"):
        if not s.get(key):
            raise ValueError(path + " lacks " + key + ": export it again with the gateway CLI")
    for key in ("host", "ca_pem"):
        if not s["mqtt"].get(key):
            raise ValueError(path + " lacks mqtt." + key + ": export it again with the gateway CLI")
    if not s["wifi"].get("ssid"):
        raise ValueError(path + " lacks wifi.ssid: fill in your network name")
    return s


def _why(e):
    return "%s %s" % (e.__class__.__name__, e)


class _Ussl:
    """`ussl.wrap_socket(sock, **params)` of MicroPython <= 1.22, on today's ssl.SSLContext."""

    @staticmethod
    def wrap_socket(sock, cert_reqs=0, cadata=None, server_hostname=None, **_):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = cert_reqs
        if cadata:
            ctx.load_verify_locations(cadata=cadata)
        return ctx.wrap_socket(sock, server_hostname=server_hostname)


def _lend_ussl():
    """umqtt.simple 1.3.x does `import ussl`, which MicroPython 1.23 and newer lack: lend one."""
    import sys

    if "ussl" in sys.modules:
        return
    try:
        import ussl  # noqa: F401 - MicroPython up to 1.22 has it
    except ImportError:
        sys.modules["ussl"] = _Ussl
