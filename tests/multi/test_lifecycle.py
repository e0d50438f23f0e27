"""carmulti.lifecycle: a round's batched conclusion is the conclusion of each run in turn."""

from __future__ import annotations

import pytest

from carmulti import AgentOutput, SharedInfra, TokenAccounting
from carmulti.executors.base import AgentRun
from carmulti.isolation import AgentContext
from carmulti.lifecycle import conclude, conclude_round


def _runs(infra: SharedInfra) -> tuple[list[AgentRun], list[str]]:
    """A round with every kind of run, successes on both sides of the others."""
    iso = AgentContext("iso", infra.state)
    iso.local_state.set("k.iso", 1, "iso")
    spent = TokenAccounting(3, 4, 0.5)
    runs = [
        AgentRun(AgentOutput("a", "A", turns=1, tokens=spent), None, 1.0),
        AgentRun(AgentOutput("renamed", "B", turns=2), None, 1.0),  # the runner's name keys the write
        AgentRun(None, "boom", 2.0),  # failed: no write
        AgentRun(AgentOutput("c", "", error="gave up", tokens=spent), "gave up", 1.0),  # runner-reported failure
        AgentRun(AgentOutput("iso", "I", turns=1), None, 1.0, iso),  # isolated: merge, then its answer
        AgentRun(AgentOutput("d", "D", turns=1, tokens=spent), None, 1.0),
        AgentRun(AgentOutput("a", "A2", turns=1), None, 1.0),  # the same key again: the later write wins
    ]
    return runs, ["a", "b", "x", "c", "iso", "d", "a"]


def _seen(infra: SharedInfra, outputs: list[AgentOutput]) -> tuple:
    trans = [(t.key, t.old_value, t.new_value, t.writer) for t in infra.state.transitions()]
    return outputs, trans, infra.state.snapshot(), infra.budget.snapshot().total_tokens, infra.turns_used


async def test_conclude_round_is_conclude_of_each_run_in_turn():
    one, batch = SharedInfra(), SharedInfra()
    try:
        runs, names = _runs(one)
        expected = _seen(one, [conclude(one, r, n) for r, n in zip(runs, names)])
        runs, names = _runs(batch)
        got = _seen(batch, conclude_round(batch, runs, names))
        assert got == expected
        assert [t[0] for t in got[1]] == ["agent.a.answer", "agent.renamed.answer", "k.iso", "agent.iso.answer",
                                          "agent.d.answer", "agent.a.answer"]
    finally:
        await one.aclose()
        await batch.aclose()


async def test_what_was_published_is_written_when_a_later_conclusion_raises():
    infra = SharedInfra()

    class Broken:
        def merge_to_parent(self, policy: str) -> None:
            raise RuntimeError("merge failed")

        def discard(self) -> None:
            pass

    try:
        runs = [AgentRun(AgentOutput("a", "A"), None, 1.0), AgentRun(AgentOutput("b", "B"), None, 1.0, Broken())]
        with pytest.raises(RuntimeError, match="merge failed"):
            conclude_round(infra, runs, ["a", "b"])
        assert infra.state.snapshot() == {"agent.a.answer": "A"}
    finally:
        await infra.aclose()
