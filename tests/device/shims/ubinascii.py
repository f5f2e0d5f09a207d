"""MicroPython `ubinascii` is CPython's binascii."""

from binascii import a2b_base64, b2a_base64, hexlify, unhexlify

__all__ = ["a2b_base64", "b2a_base64", "hexlify", "unhexlify"]
