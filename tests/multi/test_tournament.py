"""Tournament: candidates in parallel, a single-elimination bracket with byes, a fresh judge per
match, the fallbacks of a judge that does not decide, the ranking; on every executor."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import carmulti
from carmulti import (
    AgentOutput,
    AgentSpec,
    BudgetLimits,
    MatchResult,
    SharedInfra,
    Tournament,
    TournamentResult,
    is_budget_skipped,
)
from carmulti import _strings as S

_PAIR = re.compile(r"Candidate A \((.*?)\):\n.*\n\nCandidate B \((.*?)\):\n", re.S)


class BracketRunner:
    """Competitors answer ``metadata["answer"]`` (default ``"{name}'s answer"``) or raise
    ``metadata["raise"]``. The judge decides by ``metadata["mode"]``:

    * ``score``: the candidate with the higher ``metadata["scores"][name]`` wins (ties: A), in a fenced
      JSON block with prose around it;
    * ``table``: ``metadata["table"][(index(a) * 7 + index(b)) % len(table)]`` is the reply kind:
      ``"A"``/``"b"`` (a bare JSON object, lower case allowed), ``"junk"`` (no JSON) or ``"raise"``;
    * ``echo``: A wins with the judge's task as rationale;
    * ``junk`` / ``raise``: no decision.
    """

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        md = spec.metadata
        if "raise" in md:
            raise RuntimeError(md["raise"])
        if "mode" not in md:
            return md.get("answer", f"{spec.name}'s answer")
        a, b = _PAIR.search(task).groups()
        mode = md["mode"]
        if mode == "score":
            sa, sb = md["scores"][a], md["scores"][b]
            side = "B" if sb > sa else "A"
            return f"Having compared both:\n```json\n{json.dumps({'winner': side, 'rationale': f'{side} scores higher'})}\n```\nDone."
        if mode == "table":
            table = md["table"]
            mode = table[(int(a[1:]) * 7 + int(b[1:])) % len(table)]
            if mode in ("A", "b"):
                return f"{{\"winner\": \"{mode}\", \"rationale\": \"{a} v {b}\"}}"
        if mode == "echo":
            return json.dumps({"winner": "A", "rationale": task})
        if mode == "raise":
            raise RuntimeError("judge crashed")
        return "I cannot decide."


def competitors(n: int, **md_by_index: dict[str, Any]) -> list[AgentSpec]:
    return [AgentSpec(f"c{i}", metadata=md_by_index.get(f"c{i}", {})) for i in range(n)]


def judge(**md: Any) -> AgentSpec:
    return AgentSpec("judge", "You judge.", metadata=md)


async def test_bracket_byes_and_ranking(make_infra):
    infra = make_infra()
    scores = {"c0": 3, "c1": 1, "c2": 4, "c3": 1, "c4": 5}
    res = await Tournament(competitors(5), judge(mode="score", scores=scores)).run("T", BracketRunner(), infra)
    assert isinstance(res, TournamentResult)
    assert res.task == "T"
    assert [o.name for o in res.candidates] == ["c0", "c1", "c2", "c3", "c4"]
    assert res.matches == [
        MatchResult(1, "c0", "c1", "c0", "A scores higher"),
        MatchResult(1, "c2", "c3", "c2", "A scores higher"),  # c4: bye
        MatchResult(2, "c0", "c2", "c2", "B scores higher"),  # c4: bye again
        MatchResult(3, "c2", "c4", "c4", "B scores higher"),
    ]
    assert (res.winner_name, res.winner_answer) == ("c4", "c4's answer")
    assert res.ranking == ["c4", "c2", "c0", "c3", "c1"]  # later elimination first; same round: later match first
    # competitors write their answers like swarm agents; judges write nothing
    assert infra.state.get("agent.c4.answer") == "c4's answer"
    assert "agent.judge.answer" not in infra.state
    # five competitors and a fresh judge agent per match
    assert infra.budget.snapshot().agents_started == 9


async def test_failed_and_skipped_competitors_never_enter_the_bracket(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=4))
    specs = competitors(5, c1={"raise": "no idea"})
    res = await Tournament(specs, judge(mode="score", scores={"c0": 1, "c2": 2, "c3": 3})).run("T", BracketRunner(),
                                                                                                  infra)
    assert [o.error for o in res.candidates[:4]] == [None, "no idea", None, None]
    assert is_budget_skipped(res.candidates[4])
    assert [(m.a, m.b) for m in res.matches] == [("c0", "c2"), ("c0", "c3")]  # c3: bye in round 1
    # the budget (4 agents: four competitors) refuses the judges: side A advances with no rationale
    assert [(m.winner, m.rationale) for m in res.matches] == [("c0", ""), ("c0", "")]
    assert res.winner_name == "c0" and res.ranking == ["c0", "c3", "c2"]


async def test_no_answer_is_an_empty_result(make_infra):
    infra = make_infra()
    specs = competitors(3, c0={"raise": "x"}, c1={"raise": "y"}, c2={"raise": "z"})
    res = await Tournament(specs, judge(mode="score", scores={})).run("T", BracketRunner(), infra)
    assert (res.matches, res.winner_name, res.winner_answer, res.ranking) == ([], "", "", [])
    assert [o.error for o in res.candidates] == ["x", "y", "z"]
    assert infra.budget.snapshot().agents_started == 3  # no judge


async def test_no_competitors_at_all(make_infra):
    res = await Tournament([], judge()).run("T", BracketRunner(), make_infra())
    assert res == TournamentResult("T", [], [], "", "", [])


async def test_a_single_answer_wins_without_a_match(make_infra):
    infra = make_infra()
    res = await Tournament(competitors(2, c1={"raise": "x"}), judge(mode="raise")).run("T", BracketRunner(), infra)
    assert (res.matches, res.winner_name, res.winner_answer, res.ranking) == ([], "c0", "c0's answer", ["c0"])


@pytest.mark.parametrize("mode", ["junk", "raise"])
async def test_a_judge_that_does_not_decide_lets_side_a_advance(make_infra, mode):
    infra = make_infra()
    res = await Tournament(competitors(3), judge(mode=mode)).run("T", BracketRunner(), infra)
    assert res.matches == [MatchResult(1, "c0", "c1", "c0", ""), MatchResult(2, "c0", "c2", "c0", "")]
    assert res.ranking == ["c0", "c2", "c1"]


async def test_the_judge_task_and_a_fresh_judge_per_match(make_infra):
    infra = make_infra()
    specs = [AgentSpec("alpha", metadata={"answer": "4"}), AgentSpec("beta", metadata={"answer": "five"})]
    res = await Tournament(specs, judge(mode="echo")).run("What is 2 + 2?", BracketRunner(), infra)
    (match,) = res.matches
    assert match.rationale == (
        "You are judging two candidate answers to the same task. Pick the better one.\n\n"
        "Task:\nWhat is 2 + 2?\n\n"
        "Candidate A (alpha):\n4\n\n"
        "Candidate B (beta):\nfive\n\n"
        "Respond with a JSON object:\n"
        "```json\n"
        "{\n"
        '  "winner": "A|B",\n'
        '  "rationale": "why the winner is better"\n'
        "}\n"
        "```"
    )
    assert match.rationale == S.JUDGE_TASK.format(task="What is 2 + 2?", name_a="alpha", answer_a="4",
                                                  name_b="beta", answer_b="five")


def test_arguments_are_checked():
    with pytest.raises(TypeError, match=r"Tournament competitors\[1\] must be an AgentSpec"):
        Tournament([AgentSpec("a"), "b"], judge())  # type: ignore[list-item]
    with pytest.raises(TypeError, match="Tournament judge must be an AgentSpec"):
        Tournament([], "judge")  # type: ignore[arg-type]


def test_to_dict_uses_the_rust_field_names():
    res = TournamentResult("T", [AgentOutput("a", "x")], [MatchResult(1, "a", "b", "a", "r")], "a", "x", ["a", "b"])
    d = res.to_dict()
    assert list(d) == ["task", "candidates", "matches", "winner_name", "winner_answer", "ranking"]
    assert d["matches"] == [{"round": 1, "a": "a", "b": "b", "winner": "a", "rationale": "r"}]


# -- the bracket, for any field and any judge --------------------------------------------------------------------


async def _play(n: int, fails: list[bool], table: list[str]) -> TournamentResult:
    specs = [AgentSpec(f"c{i}", metadata={"raise": "out"} if fails[i] else {}) for i in range(n)]
    async with SharedInfra() as infra:
        return await Tournament(specs, judge(mode="table", table=table)).run("T", BracketRunner(), infra)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=33).flatmap(
           lambda n: st.tuples(st.just(n), st.lists(st.booleans(), min_size=n, max_size=n))),
       st.lists(st.sampled_from(["A", "b", "junk", "raise"]), min_size=1, max_size=16))
def test_any_bracket_has_alive_minus_one_matches_and_ranks_every_survivor(field, table):
    n, fails = field
    res = carmulti.run(_play(n, fails, table))
    alive = [f"c{i}" for i in range(n) if not fails[i]]
    assert len(res.matches) == max(0, len(alive) - 1)
    assert sorted(res.ranking) == sorted(alive) and len(res.ranking) == len(alive)
    if alive:
        assert res.ranking[0] == res.winner_name and res.winner_answer == f"{res.winner_name}'s answer"
        # every survivor but the winner loses exactly once; each match's winner is one of its two
        assert sorted(m.b if m.winner == m.a else m.a for m in res.matches) == sorted(res.ranking[1:])
        assert all(m.winner in (m.a, m.b) for m in res.matches)
        rounds = [m.round for m in res.matches]
        assert rounds == sorted(rounds) and (not rounds or rounds[-1] == (len(alive) - 1).bit_length())
    else:
        assert res.winner_name == "" and res.ranking == []
