"""Policies: named checks run before every action a :class:`~carmulti.Runtime` executes.

Port of car-policy's ``PolicyEngine``: every registered check is evaluated (all
violations are collected, not just the first) and a check that raises counts as
a violation, so a buggy policy fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from .actions import Action

__all__ = ["PolicyCheck", "PolicyEngine", "PolicyViolation"]

#: ``check(action, state) -> reason or None``; ``state`` is the agent's state
#: view (a ``carcore.StateStore`` or ``carcore.Overlay``).
PolicyCheck = Callable[[Action, Any], Optional[str]]


@dataclass(frozen=True)
class PolicyViolation:
    """One policy's objection to one action.

    Attributes:
        policy_name: The registered policy name.
        action_id: The action it objected to.
        reason: The policy's reason text.
    """

    policy_name: str
    action_id: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"policy_name": self.policy_name, "action_id": self.action_id, "reason": self.reason}


class PolicyEngine:
    """A registry of named policy checks shared by every runtime of a :class:`~carmulti.SharedInfra`."""

    __slots__ = ("_policies",)

    def __init__(self) -> None:
        self._policies: dict[str, tuple[PolicyCheck, str]] = {}

    def register(self, name: str, check: PolicyCheck, description: str = "") -> None:
        """Register ``check`` under ``name`` (replacing a policy of the same name).

        Args:
            name: Policy name, reported in violations.
            check: ``check(action, state)`` returning ``None`` to allow or a
                reason string to deny.
            description: Human description.

        Raises:
            TypeError: ``check`` is not callable.
        """
        if not callable(check):
            raise TypeError(f"policy {name!r}: check must be callable, got {type(check).__name__}")
        self._policies[name] = (check, description)

    def unregister(self, name: str) -> int:
        """Remove the policy ``name``; returns how many were removed (0 or 1)."""
        return 1 if self._policies.pop(name, None) is not None else 0

    def policy_names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._policies)

    def describe(self, name: str) -> str:
        """The description given at registration.

        Raises:
            KeyError: no policy ``name``.
        """
        return self._policies[name][1]

    def is_empty(self) -> bool:
        return not self._policies

    def __len__(self) -> int:
        return len(self._policies)

    def check(self, action: Action, state: Any) -> list[PolicyViolation]:
        """Run every policy against ``action``; collect all violations.

        A check that raises yields a violation whose reason is
        ``policy raised {ExcType}: {message}``.

        Returns:
            Violations in registration order; empty when the action is allowed.
        """
        out: list[PolicyViolation] = []
        for name, (check, _desc) in self._policies.items():
            try:
                reason = check(action, state)
            except Exception as exc:  # noqa: BLE001 - a raising policy fails closed
                reason = f"policy raised {type(exc).__name__}: {exc}"
            if reason is not None:
                out.append(PolicyViolation(name, action.id, str(reason)))
        return out
