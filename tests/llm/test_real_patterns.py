"""The newer patterns on a real model: SmolLM2-135M-Instruct embedded (:class:`LlamaCppRunner`,
greedy decoding: temperature 0.0 and a fixed seed, so every run gives the same replies).

A Tournament of three answers an arithmetic question and its champion's answer is right; an
AdversarialReview of a wrong answer does not pass (the tiny model rarely writes the review JSON:
then the review is inconclusive, which must never count as a pass).
"""

from __future__ import annotations

import pytest

from carmulti import AdversarialReview, AgentSpec, SharedInfra, Tournament

pytestmark = pytest.mark.llm

QUESTION = "What is 7 + 5? Reply with just the number."


@pytest.fixture(scope="module")
def llama_runner(gguf_path: str):
    from carmulti.runners import LlamaCppRunner

    runner = LlamaCppRunner(gguf_path, max_tokens=48, temperature=0.0, seed=0)
    runner.load()  # load once up front so the per-test timeouts measure inference only
    return runner


@pytest.mark.timeout(180)
async def test_tournament_of_three_crowns_a_right_answer(llama_runner):
    competitors = [AgentSpec(f"solver{i}", "You are a careful calculator.") for i in range(3)]
    async with SharedInfra() as infra:
        res = await Tournament(competitors, AgentSpec("judge", "You are a strict judge.")).run(
            QUESTION, llama_runner, infra)
    assert all(o.succeeded for o in res.candidates), [o.error for o in res.candidates]
    assert len(res.matches) == 2 and [m.round for m in res.matches] == [1, 2]
    assert res.winner_name in {"solver0", "solver1", "solver2"}
    assert "12" in res.winner_answer, res.winner_answer
    assert sorted(res.ranking) == ["solver0", "solver1", "solver2"] and res.ranking[0] == res.winner_name


@pytest.mark.timeout(180)
async def test_adversarial_review_of_a_wrong_answer_does_not_pass(llama_runner):
    review = AdversarialReview(AgentSpec("reviewer", "You are a strict reviewer."),
                               ["The answer to 7 + 5 is correct."])
    async with SharedInfra() as infra:
        res = await review.run("7 + 5 = 13", llama_runner, infra)
    assert res.reviewer_output.succeeded, res.reviewer_output.error
    assert res.passed is False, res
    assert res.findings  # a verdict per criterion, or the one inconclusive finding
    if res.inconclusive:
        assert res.findings[0].severity == "inconclusive"
        assert res.findings[0].evidence == res.reviewer_output.answer[:1024]
