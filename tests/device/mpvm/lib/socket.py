# MicroPython's socket for the VM (which has none): blocking TCP through net.mjs's worker.
import binascii
import json

import js

AF_INET = 2
SOCK_STREAM = 1
_ERRNO = {
    "ETIMEDOUT": 110,
    "ECONNREFUSED": 111,
    "ECONNRESET": 104,
    "EPIPE": 32,
    "EHOSTUNREACH": 113,
}


_bridge = js.plantyNet.call  # one proxy, kept: a lookup per call would make one each time


def call(req):
    r = json.loads(_bridge(json.dumps(req)))
    if "err" in r:
        raise OSError(_ERRNO.get(r["err"], 5))
    return r


def getaddrinfo(host, port, *_):
    return [(AF_INET, SOCK_STREAM, 0, "", (host, port))]


class socket:
    def __init__(self, *_):
        self.id = None
        self.block = True
        self.timeout_ms = 0

    def connect(self, addr):
        self.id = call({"op": "connect", "host": addr[0], "port": addr[1]})["id"]

    def settimeout(self, t):
        self.block = t != 0
        self.timeout_ms = 0 if t is None else int(t * 1000)

    def setblocking(self, flag):
        self.settimeout(None if flag else 0)

    def read(self, n=4096):
        r = call(
            {
                "op": "read",
                "id": self.id,
                "n": n,
                "block": self.block,
                "timeout_ms": self.timeout_ms,
            }
        )
        if "none" in r:
            return None
        return binascii.a2b_base64(r["b64"].encode()) if r["b64"] else b""

    def write(self, buf, n=None):
        if isinstance(buf, str):  # MicroPython's streams take str too (umqtt 1.3.4 writes ids)
            buf = buf.encode()
        data = bytes(buf) if n is None else bytes(buf[:n])
        b64 = binascii.b2a_base64(data).decode().strip()
        call({"op": "write", "id": self.id, "b64": b64, "len": len(data)})
        return len(data)

    def close(self):
        if self.id is not None:
            call({"op": "close", "id": self.id})
            self.id = None


def sleep_ms(ms):
    """time.sleep_ms without spinning the CPU (the VM's own sleep busy-waits)."""
    call({"op": "sleep", "ms": ms})
