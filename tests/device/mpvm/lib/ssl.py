# MicroPython 1.23+'s ssl for the VM: SSLContext only, and no `ussl` module anywhere, as on
# the board. The TLS itself is done by Node in net.mjs (mbedtls on a board).
import binascii
import socket as _s

CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2
PROTOCOL_TLS_CLIENT = 0
PROTOCOL_TLS_SERVER = 1


class SSLContext:
    def __init__(self, protocol):
        if protocol != PROTOCOL_TLS_CLIENT:
            raise ValueError("client side only")
        self.verify_mode = CERT_NONE
        self._ca = None

    def load_verify_locations(self, cafile=None, cadata=None):
        b64 = binascii.b2a_base64(cadata).decode().replace("\n", "")
        lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
        self._ca = (
            "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
        )

    def wrap_socket(
        self, sock, server_side=False, do_handshake_on_connect=True, server_hostname=None
    ):
        req = {"op": "tls", "id": sock.id, "servername": server_hostname}
        req["verify"] = self.verify_mode == CERT_REQUIRED
        if self._ca:
            req["ca"] = self._ca
        _s.call(req)
        return sock
