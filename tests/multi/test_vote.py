"""Vote: normalized plurality, tie-breaking, agreement ratio and the optional synthesizer."""

from __future__ import annotations

import pytest

from carmulti import AgentSpec, BudgetLimits, Vote, VoteResult, normalize_vote

from .doubles import MetaRunner, spec

NO_ANSWER = "[no agent produced an answer]"


def voters(*answers: str | None) -> list[AgentSpec]:
    """One voter per answer; ``None`` = a voter that fails."""
    return [spec(f"v{i}", **({"raise": "no vote"} if a is None else {"answer": a})) for i, a in enumerate(answers)]


async def test_normalized_plurality_winner_and_ratio(make_infra):
    infra = make_infra()
    result = await Vote(voters("Paris", " paris. ", "London")).run("capital?", MetaRunner(), infra)
    assert isinstance(result, VoteResult)
    assert result.task == "capital?"
    assert result.winner == "Paris"
    assert result.agreement_ratio == pytest.approx(2 / 3)
    assert [v.name for v in result.votes] == ["v0", "v1", "v2"]
    assert infra.state.get("agent.v2.answer") == "London"  # votes go through a parallel swarm


async def test_winner_is_original_text_of_first_vote_in_group(make_infra):
    infra = make_infra()
    result = await Vote(voters("x", "  NEW   York.", "new york", "y")).run("T", MetaRunner(), infra)
    assert result.winner == "  NEW   York."
    assert result.agreement_ratio == 0.5


async def test_tie_broken_by_first_agent_order(make_infra):
    infra = make_infra()
    result = await Vote(voters("B", "A", "A", "B")).run("T", MetaRunner(), infra)
    assert result.winner == "B"
    assert result.agreement_ratio == 0.5


async def test_failed_votes_do_not_count(make_infra):
    infra = make_infra()
    result = await Vote(voters("x", None, "x")).run("T", MetaRunner(), infra)
    assert result.winner == "x"
    assert result.agreement_ratio == 1.0
    assert result.votes[1].error == "no vote"


async def test_no_succeeded_vote(make_infra):
    infra = make_infra()
    result = await Vote(voters(None, None)).run("T", MetaRunner(), infra)
    assert result.winner == NO_ANSWER
    assert result.agreement_ratio == 0.0


async def test_synthesizer_not_used_with_a_majority(make_infra):
    infra = make_infra()
    synth = spec("judge", answer="JUDGED")
    result = await Vote(voters("A", "a", "B")).with_synthesizer(synth).run("T", MetaRunner(), infra)
    assert result.winner == "A"
    assert infra.budget.snapshot().agents_started == 3  # the judge never started


async def test_synthesizer_not_used_when_unanimous(make_infra):
    infra = make_infra()
    result = await Vote(voters("A", "A")).with_synthesizer(spec("judge", answer="J")).run("T", MetaRunner(), infra)
    assert result.winner == "A" and result.agreement_ratio == 1.0


async def test_synthesizer_decides_at_ratio_one_half_or_less(make_infra):
    infra = make_infra()
    result = await Vote(voters("A", "B")).with_synthesizer(spec("judge", answer="JUDGED")).run(
        "T", MetaRunner(), infra)
    assert result.winner == "JUDGED"
    assert result.agreement_ratio == 0.5
    assert infra.budget.snapshot().agents_started == 3


async def test_synthesizer_sees_task_and_candidates(make_infra):
    infra = make_infra()
    result = await Vote(voters("A", "B", None)).with_synthesizer(AgentSpec("judge")).run("Q?", MetaRunner(), infra)
    # The judge echoes its task: it names the task and every succeeded candidate.
    assert "Q?" in result.winner
    assert "- v0: A\n- v1: B" in result.winner
    assert "v2" not in result.winner


async def test_synthesizer_failure_keeps_plurality(make_infra):
    infra = make_infra()
    result = await Vote(voters("A", "B")).with_synthesizer(spec("judge", **{"raise": "judge down"})).run(
        "T", MetaRunner(), infra)
    assert result.winner == "A"


async def test_synthesizer_denied_keeps_plurality(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=2))
    result = await Vote(voters("A", "B")).with_synthesizer(spec("judge", answer="J")).run("T", MetaRunner(), infra)
    assert result.winner == "A"
    assert infra.budget.snapshot().agents_started == 2


async def test_synthesizer_not_called_without_votes(make_infra):
    infra = make_infra()
    result = await Vote(voters(None)).with_synthesizer(spec("judge", answer="J")).run("T", MetaRunner(), infra)
    assert result.winner == NO_ANSWER
    assert infra.budget.snapshot().agents_started == 1


@pytest.mark.parametrize(
    ("raw", "norm"),
    [("  Paris.\n", "paris"), ("New   York", "new york"), ("A.", "a"), ("a..", "a."), ("STRASSE", "strasse"),
     ("Straße", "strasse"), ("", ""), ("  .  ", "")],
)
def test_normalize_vote(raw, norm):
    assert normalize_vote(raw) == norm


def test_vote_result_to_dict():
    d = VoteResult("T", [], "w", 1.0).to_dict()
    assert d == {"task": "T", "votes": [], "winner": "w", "agreement_ratio": 1.0}
