"""The package layering of ``sim/`` (docs/architecture.md): every import, at module level or
inside a function, goes from a higher layer to a lower one or stays inside its own package,
and no two modules import each other, directly or through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SIM = Path(__file__).resolve().parent.parent / "sim"

# A package may import its own modules and those of every lower layer, never a higher one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sim.errors", "sim.version"),  # foundation: errors and the version import nothing
    ("sim.registry", "sim.entities", "sim.rng", "sim.config"),  # foundation: plug points, records, RNG, config schema
    ("sim.catalogue",),  # model architectures, GPUs
    ("sim.scheduler", "sim.cost", "sim.load", "sim.records", "sim.cluster"),  # the parts of one server run, and of a fleet's front (router, admission, KV link)
    ("sim.core",),  # engine and simulation assembly
    ("sim.studies",),  # sweeps, comparisons, validation, calibration
    ("sim.plots",),  # figures of runs and studies
    ("sim.cli",),  # the command line
    ("sim", "sim.api", "sim.__main__"),  # the public face (sim/__init__.py) and `python -m sim`
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SIM.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The layered unit a module belongs to (its package, or itself for foundation modules)."""
    for layer in LAYERS:
        for unit in sorted(layer, key=len, reverse=True):
            if module == unit or module.startswith(unit + "."):
                return unit
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layering.py")


def _rank(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _imports() -> dict[str, set[str]]:
    """module → the sim modules it imports (anywhere in its body)."""
    modules = {_module_name(p): p for p in SIM.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{name}: relative import (use absolute sim.… imports)"
                if node.module and (node.module == "sim" or node.module.startswith("sim.")):
                    for alias in node.names:  # `from sim.cost import roofline` names a module
                        sub = f"{node.module}.{alias.name}"
                        deps.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name == "sim" or a.name.startswith("sim."))
        graph[name] = {d for d in deps if d != name and d in modules}
    return graph


def test_every_module_is_in_a_layer():
    for module in _imports():
        _unit(module)


def _violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in graph.items():
        unit = _unit(module)
        for dep in deps:
            dep_unit = _unit(dep)
            if dep_unit != unit and _rank(dep_unit) >= _rank(unit):
                bad.append(f"{module} imports {dep} ({dep_unit} is not below {unit})")
    return sorted(bad)


def test_imports_follow_the_layers():
    bad = _violations(_imports())
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_sees_a_violation():
    """The check itself can fail: a cost module importing the engine, or a scheduler importing
    a cost model (same layer, other package), is reported; imports inside a package are not."""
    graph = {"sim.cost.roofline": {"sim.core.engine", "sim.cost.base"}, "sim.scheduler.kv": {"sim.cost.base"}}
    assert _violations(graph) == [
        "sim.cost.roofline imports sim.core.engine (sim.core is not below sim.cost)",
        "sim.scheduler.kv imports sim.cost.base (sim.cost is not below sim.scheduler)",
    ]


def test_public_face_is_the_api():
    """``import sim`` gives the documented API, loaded on first use, and nothing else."""
    import sim

    for name in sim.__all__:
        assert getattr(sim, name) is not None
    assert set(dir(sim)) == set(sim.__all__)
    with pytest.raises(AttributeError, match="no attribute 'engine_internals'"):
        sim.engine_internals  # noqa: B018
