"""Packaging checks: compiled modules, public names, stubs."""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import inspect
import pathlib
import sys

import pytest

import carcore

COMPILED = {
    "carcore.state": ["StateStore", "Overlay", "StateTransition"],
    "carcore.eventlog": ["EventLog", "Event", "RecoveryReport", "Subscription"],
    "carcore.budget": ["BudgetCounters"],
}


def test_all_sorted_and_complete():
    assert carcore.__all__ == sorted(carcore.__all__)
    assert set(carcore.__all__) == {
        "BudgetCounters", "CarError", "Event", "EventLog", "LogCorruptedError",
        "MergeConflictError", "Overlay", "RecoveryReport", "StateStore", "StateTransition",
        "Subscription", "check_json_value",
    }
    for name in carcore.__all__:
        assert getattr(carcore, name) is not None


@pytest.mark.parametrize("module, names", COMPILED.items())
def test_names_live_in_compiled_extensions(module, names):
    mod = importlib.import_module(module)
    assert mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), mod.__file__
    assert sys.modules[module] is mod
    for name in names:
        assert getattr(carcore, name).__module__ == module
        assert getattr(carcore, name) is getattr(mod, name)


def test_errors_module_is_pure_python():
    from carcore import errors

    assert errors.__file__.endswith(".py")
    assert issubclass(carcore.MergeConflictError, carcore.CarError)
    assert issubclass(carcore.LogCorruptedError, carcore.CarError)
    assert carcore.CarError.__module__ == "carcore.errors"


def _stub_names(path: pathlib.Path) -> dict[str, set[str]]:
    tree = ast.parse(path.read_text())
    out: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {
                n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            }
    return out


@pytest.mark.parametrize("module", COMPILED)
def test_every_public_compiled_name_is_in_the_stub(module):
    mod = importlib.import_module(module)
    pkg_dir = pathlib.Path(carcore.__file__).parent
    stub = pkg_dir / (module.rsplit(".", 1)[1] + ".pyi")
    assert stub.exists()
    assert (pkg_dir / "py.typed").exists()
    classes = _stub_names(stub)
    public = [n for n, v in vars(mod).items() if inspect.isclass(v) and not n.startswith("_")
              and v.__module__ == module]
    assert sorted(public) == sorted(COMPILED[module])
    for cname in public:
        assert cname in classes, f"{cname} missing from {stub.name}"
        cls = getattr(mod, cname)
        stubbed = set(classes[cname])
        for base in cls.__mro__[1:]:
            stubbed |= classes.get(base.__name__, set())
        for attr in dir(cls):
            if attr.startswith("_"):
                continue
            assert attr in stubbed, f"{cname}.{attr} missing from {stub.name}"


def test_docstrings_on_public_api():
    for module, names in COMPILED.items():
        mod = importlib.import_module(module)
        assert mod.__doc__
        for name in names:
            cls = getattr(mod, name)
            assert cls.__doc__, name
            for attr, val in vars(cls).items():
                if not attr.startswith("_") and callable(val):
                    assert getattr(cls, attr).__doc__, f"{name}.{attr}"
