"""One exception root: every exception class defined in src/ derives from PlantyError and
is drawn in the tree of `errors.py`'s docstring (so the drawing cannot go stale)."""

from __future__ import annotations

import ast
import importlib

from planty_broker import errors
from planty_broker.errors import PlantyError, StoreError
from planty_broker.ports.store import StoreRejectedError, StoreUnavailableError
from tests.unit.architecture.imports import modules

# Exception classes that may stay outside the tree, with the reason. None today.
JUSTIFIED: dict[str, str] = {}


def _exception_classes() -> list[tuple[str, type[BaseException]]]:
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        class_names = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        if not class_names:
            continue
        module = importlib.import_module(name)
        for cls_name in class_names:
            cls = getattr(module, cls_name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                found.append((f"{name}.{cls_name}", cls))
    return found


def test_every_error_derives_from_planty_error_and_is_in_the_drawing() -> None:
    classes = _exception_classes()
    assert len(classes) > 50  # the walk found them
    outside = [n for n, c in classes if not issubclass(c, PlantyError) and n not in JUSTIFIED]
    assert not outside, f"not under PlantyError: {outside}"
    tree = errors.__doc__ or ""
    undrawn = [n for n, _ in classes if n.rpartition(".")[2] not in tree]
    assert not undrawn, f"missing from the tree in errors.py: {undrawn}"


def test_store_errors_say_whether_a_retry_can_help() -> None:
    assert StoreUnavailableError("x").transient is True
    assert StoreRejectedError("x").transient is False
    assert issubclass(StoreUnavailableError, StoreError)
