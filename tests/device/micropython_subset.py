"""What MicroPython on an ESP32 offers, and an AST check that a file uses nothing else.

Lists follow the MicroPython 1.2x ESP32 port (docs.micropython.org library pages for esp32,
cross-checked against the 1.29 ESP32_GENERIC firmware stubs); they name only what the
device code is allowed to lean on, not all that exists.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

MODULE_NAMES: dict[str, frozenset[str]] = {
    name: frozenset(attrs.split())
    for name, attrs in {
        "gc": "collect mem_free mem_alloc",
        "json": "dumps loads",
        "os": "rename remove stat statvfs listdir mkdir",
        "hashlib": "sha256",
        "struct": "pack pack_into unpack unpack_from calcsize",
        "sys": "modules",
        "random": "getrandbits randint",
        "time": "ticks_ms ticks_us ticks_add ticks_diff sleep_ms sleep_us sleep time time_ns "
        "gmtime localtime",
        "binascii": "a2b_base64 b2a_base64 hexlify",
        "ssl": "SSLContext PROTOCOL_TLS_CLIENT CERT_REQUIRED CERT_NONE wrap_socket",
        # 1.22 and older only; the device imports it under `except ImportError`
        "ussl": "wrap_socket",
        "machine": "Pin ADC WDT RTC deepsleep lightsleep reset reset_cause unique_id DEEPSLEEP_RESET",
        "network": "WLAN STA_IF",
        "esp32": "mcu_temperature raw_temperature",
        "onewire": "OneWire",
        "ds18x20": "DS18X20",
        "ntptime": "settime host",
        "umqtt.simple": "MQTTClient MQTTException",
        # the device's own modules
        "planty_device": "Device load_secrets pem_to_der VERSION",
        "planty_cmds": "Commands load_json store_json",
        "planty_ota": "Updater V HDR HDR_LEN",
        "planty_boot": "guard load save swap rollback clear exists mkdir STATE NEW PREV PROTECTED",
    }.items()
}

BUILTINS = frozenset(
    [
        "abs",
        "all",
        "any",
        "bin",
        "bool",
        "bytearray",
        "bytes",
        "callable",
        "chr",
        "classmethod",
        "dict",
        "dir",
        "divmod",
        "enumerate",
        "eval",
        "exec",
        "filter",
        "float",
        "frozenset",
        "getattr",
        "globals",
        "hasattr",
        "hash",
        "hex",
        "id",
        "input",
        "int",
        "isinstance",
        "issubclass",
        "iter",
        "len",
        "list",
        "locals",
        "map",
        "max",
        "memoryview",
        "min",
        "next",
        "object",
        "oct",
        "open",
        "ord",
        "pow",
        "print",
        "property",
        "range",
        "repr",
        "reversed",
        "round",
        "set",
        "setattr",
        "slice",
        "sorted",
        "staticmethod",
        "str",
        "sum",
        "super",
        "tuple",
        "type",
        "zip",
        "__name__",
        "__file__",
        "const",
        "True",
        "False",
        "None",
        "NotImplemented",
        "Ellipsis",
        "ArithmeticError",
        "AssertionError",
        "AttributeError",
        "BaseException",
        "EOFError",
        "Exception",
        "GeneratorExit",
        "ImportError",
        "IndentationError",
        "IndexError",
        "KeyError",
        "KeyboardInterrupt",
        "LookupError",
        "MemoryError",
        "NameError",
        "NotImplementedError",
        "OSError",
        "OverflowError",
        "RuntimeError",
        "StopIteration",
        "SyntaxError",
        "SystemExit",
        "TypeError",
        "UnicodeError",
        "ValueError",
        "ZeroDivisionError",
    ]
)

# Methods and attributes of objects (not modules) that MicroPython's types and the ESP32
# drivers provide; names the device files define themselves are added per check.
OBJECT_NAMES = frozenset(
    [
        "find",
        "rfind",
        "replace",
        "startswith",
        "endswith",
        "encode",
        "decode",
        "join",
        "split",
        "strip",
        "lstrip",
        "rstrip",
        "format",
        "lower",
        "upper",
        "count",
        "index",
        "isdigit",
        "get",
        "pop",
        "items",
        "keys",
        "values",
        "setdefault",
        "update",
        "append",
        "insert",
        "remove",
        "sort",
        "extend",
        "copy",
        "clear",
        "args",
        "errno",
        "__class__",
        "__name__",
        "read",
        "write",
        "close",
        "seek",
        "digest",
        "connect",
        "publish",
        "subscribe",
        "set_callback",
        "set_last_will",
        "check_msg",
        "wait_msg",
        "ping",
        "disconnect",
        "sock",
        "ssl",
        "ssl_params",
        "setblocking",
        "settimeout",
        "verify_mode",
        "load_verify_locations",
        "wrap_socket",
        "value",
        "on",
        "off",
        "atten",
        "read_u16",
        "ATTN_11DB",
        "OUT",
        "IN",
        "PULL_UP",
        "feed",
        "active",
        "isconnected",
        "status",
        "ifconfig",
        "scan",
        "convert_temp",
        "read_temp",
    ]
)

FORBIDDEN_SYNTAX: dict[type[ast.AST], str] = {
    ast.JoinedStr: "f-string (formatting support differs on MicroPython; use %)",
    ast.Match: "match statement",
    ast.TryStar: "except*",
    ast.AnnAssign: "variable annotation",
    ast.AsyncFunctionDef: "async def (the loop is synchronous)",
}


@dataclass(slots=True)
class Findings:
    problems: list[str] = field(default_factory=list)

    def add(self, node: ast.AST, what: str) -> None:
        self.problems.append(f"line {getattr(node, 'lineno', '?')}: {what}")


def _bound_names(tree: ast.AST) -> set[str]:
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.Global | ast.Nonlocal):
            bound.update(node.names)
    return bound


def _own_attributes(tree: ast.AST) -> set[str]:
    """Attribute and method names the file defines itself (self.x = ..., def x, class X)."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            own.add(node.name)
    return own


def check_source(source: str, extra_attributes: frozenset[str] = frozenset()) -> list[str]:
    """Every use of something MicroPython on ESP32 may lack, as 'line N: what'."""
    tree = ast.parse(source)
    found = Findings()
    modules: dict[str, str] = {}  # local name -> module
    for node in ast.walk(tree):
        for kind, why in FORBIDDEN_SYNTAX.items():
            if isinstance(node, kind):
                found.add(node, why)
        if isinstance(node, ast.FunctionDef) and (
            node.returns or any(a.annotation for a in node.args.args + node.args.kwonlyargs)
        ):
            found.add(node, "annotation")
        if isinstance(node, ast.Dict) and None in node.keys:
            found.add(node, "{**mapping} in a dict display")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name not in MODULE_NAMES:
                    found.add(node, f"import of {alias.name}, not on MicroPython ESP32")
                elif alias.asname is None and "." in alias.name:
                    found.add(node, f"import {alias.name} binds a package")
                else:
                    modules[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if mod not in MODULE_NAMES:
                found.add(node, f"import from {mod}, not on MicroPython ESP32")
                continue
            for alias in node.names:
                if alias.name not in MODULE_NAMES[mod]:
                    found.add(node, f"{mod}.{alias.name} is not on the allow-list")
    own = _own_attributes(tree) | extra_attributes
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if isinstance(node.value, ast.Name) and node.value.id in modules:
            mod = modules[node.value.id]
            if node.attr not in MODULE_NAMES[mod]:
                found.add(node, f"{mod}.{node.attr} is not on the allow-list")
        elif node.attr not in OBJECT_NAMES and node.attr not in own:
            found.add(node, f".{node.attr} is not a MicroPython method the device may use")
    bound = _bound_names(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Load)
            and node.id not in bound
            and node.id not in BUILTINS
        ):
            found.add(node, f"builtin {node.id} is not on MicroPython")
    return found.problems
