"""The runtime's action types live in carmulti.actions; runtime re-exports them; no import cycle."""

from __future__ import annotations

import ast
import pathlib

import carmulti
import carmulti.actions as actions
import carmulti.runtime as runtime

NAMES = ("Action", "ActionProposal", "ActionResult", "ActionStatus", "ActionType", "FailureBehavior",
         "Precondition", "ProposalResult")
PKG = pathlib.Path(carmulti.__file__).parent


def _carmulti_imports(module: str) -> set[str]:
    """Sibling modules ``carmulti/{module}.py`` imports (``from .x import ...``), type-checking imports included."""
    tree = ast.parse((PKG / f"{module}.py").read_text())
    return {node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}


def test_action_types_are_reexported_unchanged():
    assert set(NAMES) == set(actions.__all__)
    for name in NAMES:
        assert getattr(runtime, name) is getattr(actions, name) is getattr(carmulti, name)
        assert name in runtime.__all__


def test_no_cycle_between_runtime_policy_and_actions():
    assert _carmulti_imports("actions") <= {"_validate"}
    assert "runtime" not in _carmulti_imports("policy") and "actions" in _carmulti_imports("policy")
    assert {"actions", "policy"} <= _carmulti_imports("runtime")


def test_precondition_holds_returns_a_bool():
    class State:
        def exists(self, key: str) -> int:
            return 1  # a truthy non-bool, as a foreign state view may return

        def get(self, key: str) -> object:
            return [1, 2]

    for op, value in (("exists", None), ("not_exists", None), ("eq", [1, 2]), ("gt", [0]), ("contains", 2)):
        assert type(actions.Precondition("k", op, value).holds(State())) is bool, op
