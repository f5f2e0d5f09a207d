# MicroPython 1.2x resolves `usocket` to its socket module; so does the VM's stand-in.
from socket import *  # noqa: F403
