"""Swarm: the Rust swarm.rs tests (spec 6.1) and the recommended swarm tests (spec 6.4)."""

from __future__ import annotations

import pytest

from carmulti import (
    AgentOutput,
    AgentSpec,
    BudgetLimits,
    SharedInfra,
    Swarm,
    SwarmMode,
    SwarmResult,
    WorkspaceConfig,
    is_budget_skipped,
)
from carmulti.testing import EchoRunner

from .doubles import CountingExecutor, MetaRunner, MockRunner, TokenRunner, ToolRunner, WorkspaceProbeRunner, spec

NO_ANSWER = "[no agent produced an answer]"


# -- Rust tests (swarm.rs) -------------------------------------------------------------------------


async def test_parallel_swarm(make_infra):
    infra = make_infra()
    agents = [AgentSpec("alice", "You are Alice"), AgentSpec("bob", "You are Bob")]
    result = await Swarm(agents, SwarmMode.PARALLEL).run("test task", MockRunner(), infra)
    assert isinstance(result, SwarmResult)
    assert result.task == "test task"
    assert len(result.outputs) == 2
    assert all(o.succeeded for o in result.outputs)
    assert infra.state.exists("agent.alice.answer")
    assert infra.state.exists("agent.bob.answer")
    assert infra.state.get("agent.alice.answer") == "answer from alice for: test task"


async def test_sequential_swarm(make_infra):
    infra = make_infra()
    agents = [AgentSpec("first", "Go first"), AgentSpec("second", "Go second")]
    result = await Swarm(agents, SwarmMode.SEQUENTIAL).run("sequential task", MockRunner(), infra)
    assert len(result.outputs) == 2
    assert result.outputs[0].answer == "answer from first for: sequential task"
    # The 50-byte prefix of "sequential task\n\nPrior agents' findings:..." reached agent 2.
    assert "Prior agents" in result.outputs[1].answer


async def test_debate_swarm(make_infra):
    infra = make_infra()
    agents = [AgentSpec("debater_a", "Argue for"), AgentSpec("debater_b", "Argue against")]
    result = await Swarm(agents, SwarmMode.DEBATE).run("debate topic", MockRunner(), infra)
    assert len(result.outputs) == 4  # 2 agents x 2 rounds
    assert [o.name for o in result.outputs] == ["debater_a", "debater_b", "debater_a_critique", "debater_b_critique"]
    assert all(o.succeeded for o in result.outputs)
    assert infra.state.exists("agent.debater_a_critique.answer")


async def test_sequential_budget_stops_chain_when_tokens_exhausted(make_infra):
    infra = make_infra(budget=BudgetLimits(max_total_tokens=150))
    agents = [AgentSpec(n) for n in ("a", "b", "c")]
    result = await Swarm(agents, SwarmMode.SEQUENTIAL).run("task", TokenRunner(100), infra)
    assert len(result.outputs) == 3
    assert result.outputs[0].succeeded and result.outputs[1].succeeded
    assert not result.outputs[2].succeeded
    assert is_budget_skipped(result.outputs[2])
    assert infra.budget.snapshot().total_tokens == 200


async def test_parallel_workspaces_are_provisioned_and_distinct(make_infra, tmp_path):
    infra = make_infra()
    base = tmp_path / "ws"
    agents = [AgentSpec("alice"), AgentSpec("bob")]
    result = await Swarm(agents, SwarmMode.PARALLEL).with_workspaces(WorkspaceConfig.directory(base)).run(
        "task", WorkspaceProbeRunner(), infra)
    assert len(result.outputs) == 2
    assert all(o.succeeded for o in result.outputs), [o.error for o in result.outputs]
    paths = [o.answer for o in result.outputs]
    assert len(paths) == 2
    assert paths[0] != paths[1], "each agent gets a distinct workspace"
    for o, p in zip(result.outputs, paths):
        assert p.startswith(str(base))
        assert o.outcome == {"files": ["probe.txt"]}  # each saw only its own file
        assert not (tmp_path / p).exists(), "workspace removed after the run"
    assert list(base.iterdir()) == []


async def test_parallel_budget_agent_cap_skips_excess(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=2))
    agents = [AgentSpec(f"a{i}") for i in range(5)]
    result = await Swarm(agents, SwarmMode.PARALLEL).run("task", MockRunner(), infra)
    assert len(result.outputs) == 5
    assert sum(o.succeeded for o in result.outputs) == 2
    assert sum(is_budget_skipped(o) for o in result.outputs) == 3
    # Gating is in agent order: the first two ran.
    assert [o.succeeded for o in result.outputs] == [True, True, False, False, False]
    assert result.outputs[2].error == "budget skipped: agent limit reached: 2/2"
    assert infra.budget.snapshot().agents_started == 2


async def test_parallel_swarm_routes_through_tool_executor(make_infra):
    infra = make_infra()
    agents = [AgentSpec("alice", "You are Alice").with_tools(["echo"]),
              AgentSpec("bob", "You are Bob").with_tools(["echo"])]
    result = await Swarm(agents, SwarmMode.PARALLEL).run("tool task", ToolRunner(), infra)
    assert len(result.outputs) == 2
    assert all(o.succeeded for o in result.outputs), [o.error for o in result.outputs]
    assert all(o.tool_calls == 1 for o in result.outputs)
    assert sorted(o.answer for o in result.outputs) == ["ping-alice", "ping-bob"]
    assert [o.tools_used for o in result.outputs] == [["echo"], ["echo"]]


class TestToolExecutorHitsLocalOnly:
    """Counts executor hits, so it observes runner-side state: local executor only."""

    async def test_executor_hit_exactly_once_per_agent(self):
        hits = [0]
        async with SharedInfra() as infra:
            agents = [AgentSpec("alice").with_tools(["echo"]), AgentSpec("bob").with_tools(["echo"])]
            result = await Swarm(agents, SwarmMode.PARALLEL).run("tool task", ToolRunner(hits), infra)
        assert hits[0] == 2
        assert sorted(o.answer for o in result.outputs) == ["ping-alice", "ping-bob"]

    async def test_unlisted_tool_is_rejected_and_executor_not_hit(self):
        hits = [0]
        async with SharedInfra() as infra:
            # No spec.tools: "echo" is not registered, so the runtime rejects the call.
            result = await Swarm([AgentSpec("alice")]).run("t", ToolRunner(hits), infra)
        assert hits[0] == 0
        assert not result.outputs[0].succeeded
        assert "not registered" in result.outputs[0].error
        assert isinstance(CountingExecutor().hits, list)


# -- synthesize ---------------------------------------------------------------------------------


async def test_synthesize_no_success_gives_no_answer_marker(make_infra):
    infra = make_infra()
    agents = [spec("a", **{"raise": "x"}), spec("b", **{"raise": "y"})]
    result = await Swarm(agents).run("T", MetaRunner(), infra)
    assert result.final_summary == NO_ANSWER


async def test_synthesize_single_success_is_verbatim_without_calling_synthesizer(make_infra):
    infra = make_infra()
    agents = [spec("a", answer="only answer"), spec("b", **{"raise": "boom"})]
    synth = spec("synth", answer="SYNTHESIZED")
    result = await Swarm(agents).with_synthesizer(synth).run("T", MetaRunner(), infra)
    assert result.final_summary == "only answer"
    assert infra.budget.snapshot().agents_started == 2  # the synthesizer never started


async def test_synthesize_concatenates_without_synthesizer(make_infra):
    infra = make_infra()
    agents = [spec("a", answer="A1"), spec("b", **{"raise": "no"}), spec("c", answer="C1")]
    result = await Swarm(agents).run("T", MetaRunner(), infra)
    assert result.final_summary == "## a\nA1\n\n## c\nC1"


async def test_synthesizer_prompt_exact_text_and_result(make_infra):
    infra = make_infra()
    agents = [spec("a", answer="A1"), spec("b", answer="B1")]
    synth = AgentSpec("synth")  # MetaRunner echoes its task
    result = await Swarm(agents).with_synthesizer(synth).run("the task", MetaRunner(), infra)
    assert result.final_summary == (
        "Original task: the task\n\nAgent outputs:\n- a: A1\n- b: B1\n\n"
        "Synthesize these into a single coherent answer."
    )
    # The synthesizer is not an output and writes no state, but uses a budget slot.
    assert [o.name for o in result.outputs] == ["a", "b"]
    assert not infra.state.exists("agent.synth.answer")
    assert infra.budget.snapshot().agents_started == 3


async def test_synthesizer_prompt_truncates_answers_to_500_bytes(make_infra):
    infra = make_infra()
    long = "x" * 499 + "é" + "y" * 100  # é straddles byte 500
    agents = [spec("a", answer=long), spec("b", answer="short")]
    result = await Swarm(agents).with_synthesizer(AgentSpec("synth")).run("T", MetaRunner(), infra)
    assert f"- a: {'x' * 499}\n- b: short" in result.final_summary
    assert "é" not in result.final_summary
    # The outputs and the state keep the full answer.
    assert result.outputs[0].answer == long
    assert infra.state.get("agent.a.answer") == long


async def test_synthesizer_failure_falls_back_to_concatenation(make_infra):
    infra = make_infra()
    agents = [spec("a", answer="A1"), spec("b", answer="B1")]
    synth = spec("synth", **{"raise": "synth broke"})
    result = await Swarm(agents).with_synthesizer(synth).run("T", MetaRunner(), infra)
    assert result.final_summary == "## a\nA1\n\n## b\nB1"


async def test_synthesizer_denied_by_budget_falls_back_to_concatenation(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=2))
    agents = [spec("a", answer="A1"), spec("b", answer="B1")]
    result = await Swarm(agents).with_synthesizer(spec("synth", answer="S")).run("T", MetaRunner(), infra)
    assert result.final_summary == "## a\nA1\n\n## b\nB1"
    assert infra.budget.snapshot().agents_started == 2


async def test_synthesizer_spend_is_recorded(make_infra):
    infra = make_infra()
    agents = [spec("a", answer="A", tokens=[10, 1, 0.0]), spec("b", answer="B", tokens=[10, 1, 0.0])]
    synth = spec("synth", answer="S", tokens=[100, 5, 0.25])
    result = await Swarm(agents).with_synthesizer(synth).run("T", MetaRunner(), infra)
    assert result.final_summary == "S"
    snap = infra.budget.snapshot()
    assert (snap.input_tokens, snap.output_tokens, snap.total_tokens) == (120, 7, 127)
    assert snap.cost_usd == pytest.approx(0.25)


# -- sequential -----------------------------------------------------------------------------------


async def test_sequential_enrichment_exact_text(make_infra):
    infra = make_infra()
    agents = [spec("a", answer="A1"), spec("b"), spec("c")]  # b and c echo their task
    result = await Swarm(agents, SwarmMode.SEQUENTIAL).run("T", MetaRunner(), infra)
    assert result.outputs[0].answer == "A1"
    assert result.outputs[1].answer == "T\n\nPrior agents' findings:\n- a: A1"
    assert result.outputs[2].answer == (
        "T\n\nPrior agents' findings:\n- a: A1\n- b: T\n\nPrior agents' findings:\n- a: A1")


async def test_sequential_truncates_prior_answers_to_300_bytes_at_char_boundary(make_infra):
    infra = make_infra()
    long = "a" * 299 + "€" + "tail"  # € is 3 bytes starting at byte 299
    agents = [spec("a", answer=long), spec("b")]
    result = await Swarm(agents, SwarmMode.SEQUENTIAL).run("T", MetaRunner(), infra)
    assert result.outputs[1].answer == "T\n\nPrior agents' findings:\n- a: " + "a" * 299


async def test_sequential_truncation_keeps_whole_multibyte_chars(make_infra):
    infra = make_infra()
    long = "é" * 200  # 400 bytes; 300 bytes = exactly 150 chars
    agents = [spec("a", answer=long), spec("b")]
    result = await Swarm(agents, SwarmMode.SEQUENTIAL).run("T", MetaRunner(), infra)
    assert result.outputs[1].answer == "T\n\nPrior agents' findings:\n- a: " + "é" * 150


async def test_sequential_failed_priors_omitted_and_chain_continues(make_infra):
    infra = make_infra()
    agents = [spec("a", sleep=0.01, **{"raise": "a broke"}), spec("b"), spec("c", **{"raise": "c broke"}), spec("d")]
    result = await Swarm(agents, SwarmMode.SEQUENTIAL).run("T", MetaRunner(), infra)
    assert [o.name for o in result.outputs] == ["a", "b", "c", "d"]
    assert [o.succeeded for o in result.outputs] == [False, True, False, True]
    # Prior outputs exist but none succeeded: the header is there with an empty list.
    assert result.outputs[1].answer == "T\n\nPrior agents' findings:\n"
    assert result.outputs[3].answer == "T\n\nPrior agents' findings:\n- b: T\n\nPrior agents' findings:\n"
    failed = result.outputs[0]
    assert failed.error == "a broke"
    assert failed.answer == "" and failed.turns == 0 and failed.tool_calls == 0
    assert failed.duration_ms > 0  # sequential failures carry the measured wall time
    assert result.outputs[2].duration_ms > 0
    assert not infra.state.exists("agent.a.answer")
    assert infra.state.exists("agent.d.answer")


async def test_sequential_budget_skipped_first_agent_makes_header_appear(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=1))
    agents = [spec("a"), spec("b")]
    result = await Swarm(agents, SwarmMode.SEQUENTIAL).run("T", EchoRunner("{task}"), infra)
    assert result.outputs[0].succeeded and result.outputs[0].answer == "T"
    assert is_budget_skipped(result.outputs[1])
    assert result.outputs[1].error == "budget skipped: agent limit reached: 1/1"


# -- parallel -------------------------------------------------------------------------------------


async def test_parallel_output_order_equals_input_order(make_infra):
    infra = make_infra()
    # Completion order is c, b, a; output order must still be a, b, c.
    agents = [spec("a", sleep=0.15, answer="A"), spec("b", sleep=0.08, answer="B"), spec("c", answer="C")]
    result = await Swarm(agents).run("T", MetaRunner(), infra)
    assert [o.name for o in result.outputs] == ["a", "b", "c"]
    assert [o.answer for o in result.outputs] == ["A", "B", "C"]
    assert result.final_summary == "## a\nA\n\n## b\nB\n\n## c\nC"


async def test_parallel_agents_get_unmodified_task(make_infra):
    infra = make_infra()
    result = await Swarm([spec("a"), spec("b")]).run("the exact task", EchoRunner("{task}"), infra)
    assert [o.answer for o in result.outputs] == ["the exact task", "the exact task"]


async def test_parallel_runner_exception_becomes_error_output(make_infra):
    infra = make_infra()
    agents = [spec("ok", answer="fine"), spec("bad", **{"raise": "kaboom: details"})]
    result = await Swarm(agents).run("T", MetaRunner(), infra)
    bad = result.outputs[1]
    assert bad == AgentOutput(name="bad", answer="", turns=0, tool_calls=0, duration_ms=0.0,
                              error="kaboom: details", outcome=None, tokens=None, tools_used=[])
    assert not bad.succeeded
    assert not infra.state.exists("agent.bad.answer")
    assert result.final_summary == "fine"


async def test_parallel_failed_agent_spend_not_recorded_but_slot_used(make_infra):
    infra = make_infra(budget=BudgetLimits(max_agents=10))
    agents = [spec("ok", tokens=[5, 5, 0.0]), spec("bad", tokens=[100, 100, 0.0], **{"raise": "x"})]
    await Swarm(agents).run("T", MetaRunner(), infra)
    snap = infra.budget.snapshot()
    assert snap.total_tokens == 10
    assert snap.agents_started == 2  # slots are not refunded


async def test_state_writer_id_is_swarm_name(make_infra):
    infra = make_infra()
    await Swarm([spec("alice", answer="A"), spec("bob", answer="B")]).run("T", MetaRunner(), infra)
    writes = {t.key: t for t in infra.state.transitions() if t.key.startswith("agent.")}
    assert set(writes) == {"agent.alice.answer", "agent.bob.answer"}
    assert writes["agent.alice.answer"].writer == "swarm.alice"
    assert writes["agent.alice.answer"].new_value == "A"
    assert writes["agent.bob.answer"].writer == "swarm.bob"


async def test_state_key_uses_name_returned_by_runner(make_infra):
    infra = make_infra()
    await Swarm([spec("alice", answer="A", report_name="renamed")]).run("T", MetaRunner(), infra)
    assert infra.state.get("agent.renamed.answer") == "A"
    assert not infra.state.exists("agent.alice.answer")
    (t,) = [t for t in infra.state.transitions() if t.key == "agent.renamed.answer"]
    assert t.writer == "swarm.renamed"


async def test_isolated_success_merges_and_failure_does_not(make_infra):
    infra = make_infra()
    agents = [spec("good", write={"k.good": 1}), spec("bad", write={"k.bad": 2}, **{"raise": "failed after write"})]
    result = await Swarm(agents).with_isolation().run("T", MetaRunner(), infra)
    assert [o.succeeded for o in result.outputs] == [True, False]
    assert infra.state.get("k.good") == 1
    assert not infra.state.exists("k.bad")


async def test_without_isolation_failed_agent_writes_stay(make_infra):
    infra = make_infra()
    agents = [spec("good", write={"k.good": 1}), spec("bad", write={"k.bad": 2}, **{"raise": "failed after write"})]
    await Swarm(agents).run("T", MetaRunner(), infra)
    assert infra.state.get("k.good") == 1
    assert infra.state.get("k.bad") == 2


async def test_isolated_agents_do_not_see_each_others_writes(make_infra):
    infra = make_infra()
    # Both write "shared", then (after the other has written) read it back.
    agents = [spec("a", write={"shared": "a"}, sleep2=0.1, read="shared", answer="@read"),
              spec("b", write={"shared": "b"}, sleep2=0.1, read="shared", answer="@read")]
    result = await Swarm(agents).with_isolation().run("T", MetaRunner(), infra)
    assert [o.answer for o in result.outputs] == ["a", "b"]
    # Merged in agent order after the batch: the last agent's write wins.
    assert infra.state.get("shared") == "b"


async def test_isolated_agent_reads_fall_through_to_parent(make_infra):
    infra = make_infra()
    infra.state.set("seed", {"v": 7})
    result = await Swarm([spec("a", read="seed", answer="@read")]).with_isolation().run("T", MetaRunner(), infra)
    assert result.outputs[0].answer == str({"v": 7})


async def test_task_scope_agent_name_inside_isolated_agent(make_infra):
    infra = make_infra()
    agents = [spec("alpha", answer="@scope"), spec("beta", answer="@scope")]
    iso = await Swarm(agents).with_isolation().run("T", MetaRunner(), infra)
    assert [o.answer for o in iso.outputs] == ["alpha", "beta"]
    plain = await Swarm(agents).run("T", MetaRunner(), infra)
    assert [o.answer for o in plain.outputs] == ["None", "None"]


# -- debate ---------------------------------------------------------------------------------------


async def test_debate_critique_spec_name_and_system_prompt_exact(make_infra):
    infra = make_infra()
    agents = [spec("a", "SA", answer="@prompt_task"), spec("b", "SB", answer="@prompt_task"),
              spec("c", "SC", answer="@prompt_task")]
    result = await Swarm(agents, SwarmMode.DEBATE).run("T", MetaRunner(), infra)
    assert [o.name for o in result.outputs] == ["a", "b", "c", "a_critique", "b_critique", "c_critique"]
    assert [o.answer for o in result.outputs[:3]] == ["SA||T", "SB||T", "SC||T"]
    crit_a = result.outputs[3].answer
    # Critique agents get the original task; their system prompt lists the *others* only.
    assert crit_a == (
        "SA\n\nOriginal task: T\n\nOther agents' answers:\n- b: SB||T\n- c: SC||T\n\n"
        "Critique these answers and provide your improved response.||T"
    )
    assert "- a:" not in crit_a
    assert "- a: SA||T" in result.outputs[4].answer and "- b:" not in result.outputs[4].answer
    assert infra.state.exists("agent.a_critique.answer")


async def test_debate_others_exclude_failed_and_truncate_300(make_infra):
    infra = make_infra()
    long = "z" * 299 + "é"
    agents = [spec("a", "SA", answer="@prompt"), spec("b", "SB", answer=long), spec("c", "SC", **{"raise": "no"})]
    result = await Swarm(agents, SwarmMode.DEBATE).run("T", MetaRunner(), infra)
    crit_a = result.outputs[3].answer
    assert "Other agents' answers:\n- b: " + "z" * 299 + "\n\nCritique" in crit_a
    assert "- c:" not in crit_a
    assert len(result.outputs) == 6


async def test_debate_final_summary_uses_synthesizer_over_all_outputs(make_infra):
    infra = make_infra()
    agents = [spec("a", answer="A"), spec("b", answer="B")]
    result = await Swarm(agents, SwarmMode.DEBATE).with_synthesizer(AgentSpec("judge")).run("T", MetaRunner(), infra)
    assert result.final_summary == (
        "Original task: T\n\nAgent outputs:\n- a: A\n- b: B\n- a_critique: A\n- b_critique: B\n\n"
        "Synthesize these into a single coherent answer.")


# -- workspaces -------------------------------------------------------------------------------------


async def test_workspace_provisioning_failure_burns_no_budget_slot(make_infra, tmp_path):
    infra = make_infra(budget=BudgetLimits(max_agents=5))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    agents = [AgentSpec("a"), AgentSpec("b")]
    result = await Swarm(agents).with_workspaces(WorkspaceConfig.directory(not_a_dir)).run(
        "T", WorkspaceProbeRunner(), infra)
    assert len(result.outputs) == 2
    for o, name in zip(result.outputs, ["a", "b"]):
        assert o.name == name
        assert o.error.startswith("workspace provisioning failed: ")
        assert not is_budget_skipped(o)
        assert o.answer == "" and o.turns == 0
    assert infra.budget.snapshot().agents_started == 0
    assert result.final_summary == NO_ANSWER


async def test_workspace_released_when_budget_denies(make_infra, tmp_path):
    infra = make_infra(budget=BudgetLimits(max_agents=1))
    base = tmp_path / "ws"
    result = await Swarm([AgentSpec("a"), AgentSpec("b")]).with_workspaces(WorkspaceConfig.directory(base)).run(
        "T", WorkspaceProbeRunner(), infra)
    assert result.outputs[0].succeeded
    assert is_budget_skipped(result.outputs[1])
    assert list(base.iterdir()) == []


async def test_workspace_metadata_not_injected_without_config(make_infra):
    infra = make_infra()
    result = await Swarm([AgentSpec("a")]).run("T", WorkspaceProbeRunner(), infra)
    assert result.outputs[0].error.startswith("no workspace metadata for a")


# -- runner return values, timeouts ------------------------------------------------------------------


async def test_str_returning_runner_is_wrapped(make_infra):
    infra = make_infra()
    result = await Swarm([spec("a", sleep=0.01, **{"return": "plain text"})]).run("T", MetaRunner(), infra)
    out = result.outputs[0]
    assert out.succeeded
    assert out.name == "a" and out.answer == "plain text" and out.turns == 1
    assert out.duration_ms > 0
    assert infra.state.get("agent.a.answer") == "plain text"


async def test_runner_returning_wrong_type_is_an_error_naming_the_type(make_infra):
    infra = make_infra()
    result = await Swarm([spec("a", **{"return": 42}), spec("b", **{"return": {"x": 1}})]).run(
        "T", MetaRunner(), infra)
    assert not result.outputs[0].succeeded
    assert "int" in result.outputs[0].error
    assert "dict" in result.outputs[1].error
    assert not infra.state.exists("agent.a.answer")


async def test_agent_timeout(make_infra):
    infra = make_infra(agent_timeout_s=0.2)
    agents = [spec("slow", sleep=30, answer="never"), spec("fast", answer="quick")]
    result = await Swarm(agents).run("T", MetaRunner(), infra)
    assert result.outputs[0].error == "timeout after 0.2s"
    assert result.outputs[0].answer == ""
    assert result.outputs[1].succeeded and result.outputs[1].answer == "quick"
    assert result.final_summary == "quick"


async def test_swarm_rejects_non_spec_agents():
    with pytest.raises(TypeError, match="AgentSpec"):
        Swarm(["not a spec"])  # type: ignore[list-item]


def test_swarm_mode_values():
    assert [m.value for m in SwarmMode] == ["parallel", "sequential", "debate"]
    assert SwarmMode("debate") is SwarmMode.DEBATE
    assert Swarm([AgentSpec("a")]).mode is SwarmMode.PARALLEL
