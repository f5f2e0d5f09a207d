"""The layers hold, read from the code's own imports (see `imports.py` for what counts).

Arrows point down: cli/app -> northbound -> services -> ports/domain/protocol; storage,
mqttserver and transport implement the ports. docs/architecture.md draws the same rules.
"""

from __future__ import annotations

import ast

import pytest

from tests.unit.architecture.imports import Edge, cycles, edges, modules

P = "planty_broker"
FOUNDATION = {f"{P}.errors", f"{P}.protocol"}

# (layer, modules it must never import). A layer is a package or module prefix.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "services": ("northbound", "transport", "mqttserver", "storage", "cli", "app", "simulator"),
    "storage": ("services", "northbound", "cli", "app", "mqttserver", "transport"),
    "transport": ("services", "northbound", "cli", "app", "storage", "mqttserver"),
    "mqttserver": ("services", "northbound", "cli", "app", "storage", "transport"),
    "northbound": ("mqttserver", "transport", "storage", "cli", "app"),
    "simulator": ("services", "northbound", "storage", "mqttserver", "cli", "app", "ports"),
}
# (layer, the only modules it may import besides itself)
ONLY: dict[str, tuple[str, ...]] = {
    "domain": ("domain", "protocol", "errors"),
    "ports": ("ports", "domain", "protocol", "errors"),
    "errors": (),
    "protocol": ("errors",),
}


def _in(module: str, layer: str) -> bool:
    name = f"{P}.{layer}"
    return module == name or module.startswith(name + ".")


def _show(found: list[Edge]) -> str:
    return "\n".join(
        f"  {e.source} (line {e.line}{', in a function' if e.in_function else ''}) -> {e.target}"
        for e in found
    )


ALL = edges()


def test_the_walk_sees_the_code() -> None:
    """A walk that found nothing would pass every rule below: make sure it reads imports."""
    found = {(e.source, e.target) for e in ALL}
    assert (f"{P}.app", f"{P}.services.context") in found
    assert (f"{P}.services.commands.outbox", f"{P}.services.commands") in found  # the package
    assert len(modules()) > 100


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_what_it_must_not(layer: str) -> None:
    bad = [
        e
        for e in ALL
        if _in(e.source, layer) and any(_in(e.target, other) for other in FORBIDDEN[layer])
    ]
    assert not bad, f"{layer} must not import {', '.join(FORBIDDEN[layer])}:\n{_show(bad)}"


@pytest.mark.parametrize("layer", sorted(ONLY))
def test_lower_layers_import_only_below_them(layer: str) -> None:
    allowed = (layer, *ONLY[layer])
    bad = [
        e
        for e in ALL
        if _in(e.source, layer)
        and e.target != P
        and not any(_in(e.target, a) for a in allowed)
    ]
    assert not bad, f"{layer} may import only {', '.join(allowed)}:\n{_show(bad)}"


def test_nothing_but_the_cli_imports_the_composition_root() -> None:
    bad = [
        e
        for e in ALL
        if (_in(e.target, "app") or _in(e.target, "cli"))
        and not (_in(e.source, "cli") or _in(e.source, "app"))
    ]
    assert not bad, f"only the CLI may import app.py:\n{_show(bad)}"


def test_there_is_no_import_cycle_anywhere_not_even_through_a_function() -> None:
    found = cycles(ALL)
    assert not found, "import cycles:\n" + "\n".join("  " + " <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function() -> None:
    fake = [Edge("a", "b", 1, False), Edge("b", "c", 1, False), Edge("c", "a", 9, True)]
    assert cycles(fake) == [["a", "b", "c"]]


def test_every_package_init_is_one_docstring_saying_what_it_owns_and_may_import() -> None:
    for name, path in modules().items():
        if path.name != "__init__.py" or name == P:
            continue
        tree = ast.parse(path.read_text())
        doc = ast.get_docstring(tree)
        assert doc, f"{path}: no docstring"
        assert len(tree.body) == 1, f"{path}: only the docstring belongs in a package __init__"
        assert "import" in doc, f"{path}: the docstring must say what the package may import"
