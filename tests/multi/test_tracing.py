"""OpenTelemetry spans (issue 11, carmulti.tracing): names, kinds, attributes and parents per the GenAI
semantic conventions, on the local, process and Ray executors, and nothing at all without the API.

The coordinator's spans go to an in-memory exporter (``tracing.set_tracer_provider``). Worker processes
are other interpreters: the executor's documented ``initializer`` installs, in each worker, a provider
whose exporter writes one JSON line per span to a file of that worker (the SDK's ``ConsoleSpanExporter``),
read back here after the executor closes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import carmulti
from carmulti import (
    Action,
    ActionProposal,
    AdversarialReview,
    Advisor,
    AgentOutput,
    AgentSpec,
    Delegator,
    Fleet,
    LocalExecutor,
    MapReduce,
    Pipeline,
    ProcessExecutor,
    RayExecutor,
    SharedInfra,
    SpawnSubtask,
    Supervisor,
    Swarm,
    TokenAccounting,
    ToolError,
    Tournament,
    Vote,
    tracing,
)
from carmulti.executors.process import wire

ROOT = pathlib.Path(__file__).resolve().parents[2]
KINDS = ["local", "process", "ray"]


# -- where spans go ------------------------------------------------------------------------------------------------

def export_spans_to(directory: str) -> None:
    """A worker's initializer: its spans, one JSON line each, to ``{directory}/spans-{pid}.jsonl``."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    from carmulti import tracing

    out = open(os.path.join(directory, f"spans-{os.getpid()}.jsonl"), "a", encoding="utf-8")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
        out=out, formatter=lambda span: span.to_json(indent=None) + "\n")))
    tracing.set_tracer_provider(provider)


@dataclass
class Span:
    name: str
    kind: str
    span_id: int
    parent_id: int | None
    trace_id: int
    attrs: dict[str, Any]
    status: str


def _from_sdk(s: Any) -> Span:
    return Span(s.name, s.kind.name, s.context.span_id, s.parent.span_id if s.parent else None, s.context.trace_id,
                dict(s.attributes), s.status.status_code.name)


def _from_json(d: dict[str, Any]) -> Span:
    parent = d["parent_id"]
    return Span(d["name"], d["kind"].rpartition(".")[2], int(d["context"]["span_id"], 16),
                int(parent, 16) if parent else None, int(d["context"]["trace_id"], 16), d["attributes"],
                d["status"]["status_code"])


@pytest.fixture
def exporter():
    """The coordinator's spans, in memory; carmulti's provider is reset afterwards."""
    exp = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exp))
    tracing.set_tracer_provider(provider)
    try:
        yield exp
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()


class Traced:
    """``make(**infra_kwargs) -> SharedInfra`` on one executor kind; :meth:`spans` once they are closed."""

    def __init__(self, kind: str, exporter: InMemorySpanExporter, directory: pathlib.Path, cluster: Any) -> None:
        self.kind = kind
        self.exporter = exporter
        self.directory = directory
        self.cluster = cluster
        self.made: list[SharedInfra] = []

    def make(self, **kwargs: Any) -> SharedInfra:
        init = functools.partial(export_spans_to, str(self.directory))
        if self.kind == "local":
            ex: Any = LocalExecutor()
        elif self.kind == "process":
            ex = ProcessExecutor(workers=2, initializer=init)
        else:
            ex = RayExecutor(address=self.cluster.address, initializer=init)
        infra = SharedInfra(executor=ex, **kwargs)
        self.made.append(infra)
        return infra

    async def aclose(self) -> None:
        for infra in self.made:
            await infra.aclose()

    async def spans(self) -> list[Span]:
        await self.aclose()  # workers flush their providers on stop
        out = [_from_sdk(s) for s in self.exporter.get_finished_spans()]
        for f in sorted(self.directory.glob("spans-*.jsonl")):
            out += [_from_json(json.loads(line)) for line in f.read_text().splitlines() if line]
        return out


@pytest.fixture(params=KINDS, ids=KINDS)
async def traced(request: pytest.FixtureRequest, exporter: InMemorySpanExporter, tmp_path: pathlib.Path):
    cluster = request.getfixturevalue("ray_cluster") if request.param == "ray" else None
    t = Traced(request.param, exporter, tmp_path, cluster)
    try:
        yield t
    finally:
        await t.aclose()


def _agent_kind(kind: str) -> str:
    return "INTERNAL" if kind == "local" else "CLIENT"


def _named(spans: list[Span], name: str) -> list[Span]:
    return [s for s in spans if s.name == name]


def _one(spans: list[Span], name: str) -> Span:
    found = _named(spans, name)
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


# -- runners -------------------------------------------------------------------------------------------------------

class LocalTools:
    """Tool executor the runner installs itself: ``fail`` raises ``ToolError``, anything else echoes."""

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        if tool == "fail":
            raise ToolError("no such luck")
        return f"{tool}:{sorted(params)}"


class TraceRunner:
    """``metadata``: ``calls`` ``[[tool, params], ...]`` (each a one-action proposal; tools other than
    ``delegate`` run on :class:`LocalTools`), ``raise`` (a ``ValueError``), ``report`` (an output with that
    ``error``), ``sleep`` (seconds), ``return`` (returned as is: neither an output nor a str), ``bad_turns``
    (an output with that ``turns``). Reports 10 input / 20 output tokens and $0.25."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
        md = spec.metadata
        if "raise" in md:
            raise ValueError(md["raise"])
        if "return" in md:
            return md["return"]
        if "bad_turns" in md:
            return AgentOutput(spec.name, "x", turns=md["bad_turns"])
        if "sleep" in md:
            await asyncio.sleep(md["sleep"])
        if runtime.executor is None:
            runtime.set_executor(LocalTools())
        for i, (tool, params) in enumerate(md.get("calls", ())):
            await runtime.execute(ActionProposal(f"p{i}", spec.name, [Action(f"{spec.name}.c{i}", tool=tool,
                                                                             parameters=params)]))
        return AgentOutput(spec.name, f"{spec.name} ok", turns=1, error=md.get("report"),
                           tokens=TokenAccounting(10, 20, 0.25))


# -- the tests -----------------------------------------------------------------------------------------------------

async def test_a_thousand_agents_are_children_of_their_workflow_span(traced: Traced):
    n = 1000
    infra = traced.make()
    res = await Swarm([AgentSpec(f"a{i}") for i in range(n)]).run("t", TraceRunner(), infra)
    assert all(o.succeeded for o in res.outputs)
    spans = await traced.spans()
    wf = _one(spans, "invoke_workflow swarm")
    assert wf.kind == "INTERNAL" and wf.parent_id is None
    assert wf.attrs == {"gen_ai.operation.name": "invoke_workflow", "gen_ai.workflow.name": "swarm"}
    agents = [s for s in spans if s.name.startswith("invoke_agent ")]
    assert sorted(s.name for s in agents) == sorted(f"invoke_agent a{i}" for i in range(n))
    assert {s.parent_id for s in agents} == {wf.span_id}
    assert {s.trace_id for s in agents} == {wf.trace_id}
    assert {s.kind for s in agents} == {_agent_kind(traced.kind)}
    assert len({s.span_id for s in agents}) == n


async def test_attributes_tool_spans_and_errors_follow_the_conventions(traced: Traced):
    infra = traced.make()
    tooler = AgentSpec("tooler", tools=["lookup", "fail"], metadata={
        "model": "m-1", "provider": "openai", "calls": [["lookup", {"q": 1}], ["fail", {}]]})
    agents = [tooler, AgentSpec("raiser", metadata={"raise": "boom"}),
              AgentSpec("reporter", metadata={"report": "bad day"}), AgentSpec("wrong", metadata={"return": 42}),
              AgentSpec("invalid", metadata={"bad_turns": -1})]
    await Swarm(agents).run("t", TraceRunner(), infra)
    await Fleet([AgentSpec("sleeper", system_prompt="wait", metadata={"sleep": 30})],
                agent_timeout_s=0.5).run(TraceRunner(), infra)
    spans = await traced.spans()
    wf = _one(spans, "invoke_workflow swarm")
    kind = _agent_kind(traced.kind)

    t = _one(spans, "invoke_agent tooler")
    assert (t.kind, t.parent_id, t.status) == (kind, wf.span_id, "UNSET")
    assert t.attrs == {"gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": "openai",
                       "gen_ai.agent.name": "tooler", "gen_ai.request.model": "m-1",
                       "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 20, "carmulti.cost_usd": 0.25}
    ok, bad = _one(spans, "execute_tool lookup"), _one(spans, "execute_tool fail")
    for s, tool, k in ((ok, "lookup", 0), (bad, "fail", 1)):
        assert (s.kind, s.parent_id, s.trace_id) == ("INTERNAL", t.span_id, wf.trace_id)
        assert {k2: v for k2, v in s.attrs.items() if k2 != "error.type"} == {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool, "gen_ai.tool.call.id": f"tooler.c{k}",
            "gen_ai.tool.type": "function"}
    assert ok.status == "UNSET" and "error.type" not in ok.attrs
    assert bad.status == "ERROR" and bad.attrs["error.type"] == "carmulti.ToolError"

    r = _one(spans, "invoke_agent raiser")
    assert (r.status, r.attrs["error.type"], r.parent_id) == ("ERROR", "ValueError", wf.span_id)
    assert r.attrs["gen_ai.provider.name"] == tracing.DEFAULT_PROVIDER and "gen_ai.request.model" not in r.attrs
    assert "gen_ai.usage.input_tokens" not in r.attrs
    rep = _one(spans, "invoke_agent reporter")
    assert (rep.status, rep.attrs["error.type"], rep.attrs["gen_ai.usage.output_tokens"]) == ("ERROR", "agent_error", 20)
    for name in ("wrong", "invalid"):  # the runner returned an int; an output with turns=-1
        s = _one(spans, f"invoke_agent {name}")
        assert (s.status, s.attrs["error.type"], s.parent_id) == ("ERROR", "invalid_output", wf.span_id)

    fleet = _one(spans, "invoke_workflow fleet")
    sl = _one(spans, "invoke_agent sleeper")
    assert (sl.parent_id, sl.status, sl.attrs["error.type"]) == (fleet.span_id, "ERROR", "timeout")
    assert fleet.trace_id != wf.trace_id  # two pattern runs, two traces


async def test_tool_calls_sent_back_to_the_coordinator_keep_the_trace(traced: Traced):
    """A worker's ``delegate`` call runs on the coordinator: the specialist's span is a child of the call's span."""
    infra = traced.make()
    main = AgentSpec("lead", metadata={"calls": [["delegate", {"specialist": "helper", "subtask": "s"}]]})
    res = await Delegator(main, {"helper": AgentSpec("helper")}).run("t", TraceRunner(), infra)
    assert res.delegations[0].success
    spans = await traced.spans()
    wf = _one(spans, "invoke_workflow delegator")
    lead = _one(spans, "invoke_agent lead")
    call = _one(spans, "execute_tool delegate")
    helper = _one(spans, "invoke_agent helper")
    assert (lead.parent_id, call.parent_id, helper.parent_id) == (wf.span_id, lead.span_id, call.span_id)
    assert {s.trace_id for s in (lead, call, helper)} == {wf.trace_id}


async def test_nested_patterns_nest_their_spans_and_every_pattern_names_its_workflow(exporter: InMemorySpanExporter):
    runner = TraceRunner()
    async with SharedInfra() as infra:
        await Supervisor([AgentSpec("w1"), AgentSpec("w2")], AgentSpec("boss"), max_rounds=2).run("t", runner, infra)
        sup = _one([_from_sdk(s) for s in exporter.get_finished_spans()], "invoke_workflow supervisor")
        spans = [_from_sdk(s) for s in exporter.get_finished_spans()]
        rounds = _named(spans, "invoke_workflow swarm")
        assert len(rounds) == 2 and {s.parent_id for s in rounds} == {sup.span_id}
        assert {s.parent_id for s in _named(spans, "invoke_agent w1")} == {s.span_id for s in rounds}
        assert {s.parent_id for s in _named(spans, "invoke_agent boss")} == {sup.span_id}

        exporter.clear()
        a, b = AgentSpec("a"), AgentSpec("b")
        await Pipeline([a, b]).run("t", runner, infra)
        await Vote([a, b]).run("t", runner, infra)
        await MapReduce(a, b).run("t", ["x", "y"], runner, infra)
        await Tournament([a, b], AgentSpec("judge")).run("t", runner, infra)
        await Fleet([a]).run(runner, infra)
        await AdversarialReview(AgentSpec("rev"), ["c"]).run("work", runner, infra)
        await Advisor(AgentSpec("adv"), 1).consult("t", runner, infra)
        await SpawnSubtask(AgentSpec("main")).run("t", runner, infra)
        await Delegator(a, {}).run("t", runner, infra)
        await Swarm([a]).run("t", runner, infra)
    spans = [_from_sdk(s) for s in exporter.get_finished_spans()]
    workflows = [s for s in spans if s.name.startswith("invoke_workflow ")]
    assert [s.attrs["gen_ai.workflow.name"] for s in workflows] == [
        "pipeline", "vote", "map_reduce", "tournament", "fleet", "adversarial_review", "advisor", "spawn_subtask",
        "delegator", "swarm"]  # Pipeline and Vote are swarms inside: no nested swarm span
    assert all(s.parent_id is None and s.name == f"invoke_workflow {s.attrs['gen_ai.workflow.name']}"
               for s in workflows)
    ids = {s.span_id for s in workflows}
    assert all(s.parent_id in ids for s in spans if s.name.startswith("invoke_agent "))


async def test_a_pattern_that_raises_marks_its_workflow_span(exporter: InMemorySpanExporter):
    async with SharedInfra() as infra:
        with pytest.raises(carmulti.AgentFailed):
            await MapReduce(AgentSpec("m"), AgentSpec("r", metadata={"raise": "no"})).run("t", ["x"], TraceRunner(),
                                                                                           infra)
    wf = _one([_from_sdk(s) for s in exporter.get_finished_spans()], "invoke_workflow map_reduce")
    assert (wf.status, wf.attrs["error.type"]) == ("ERROR", "carmulti.AgentFailed")


async def test_without_a_provider_no_span_is_made_and_nothing_is_propagated():
    assert tracing.ENABLED and tracing.tracer() is None  # the API's proxy provider: nothing records
    assert tracing.inject() is None
    async with SharedInfra() as infra:
        res = await Swarm([AgentSpec("a", tools=["lookup"], metadata={"calls": [["lookup", {}]]})]).run(
            "t", TraceRunner(), infra)
    assert res.outputs[0].succeeded


def test_the_job_and_tool_request_trace_fields_are_checked_on_the_wire():
    job = carmulti.executors.AgentJob(AgentSpec("a"), "t")
    tp = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    d = wire.encode_job(1, 1, 1, job, None, None, tp)
    body, _ = wire.decode(wire.encode({"t": "jobs", "jobs": [d]}), wire.TO_WORKER)
    assert body["jobs"][0]["trace"] == tp
    assert "trace" not in wire.encode_job(1, 1, 1, job, None, None)
    with pytest.raises(carmulti.WireProtocolError, match=re.escape("$.jobs[0].trace.traceparent")):
        wire.decode(wire.encode({"t": "jobs", "jobs": [{**d, "trace": {"traceparent": 3}}]}), wire.TO_WORKER)
    with pytest.raises(carmulti.WireProtocolError, match=re.escape("$.jobs[0].trace")):
        wire.decode(wire.encode({"t": "jobs", "jobs": [{**d, "trace": "00-x"}]}), wire.TO_WORKER)
    req = {"rid": 1, "op": "tool", "job": 1, "tool": "x", "params": {}, "trace": tp}
    wire.decode(wire.encode({"t": "batch", "requests": [req]}), wire.TO_COORDINATOR)
    with pytest.raises(carmulti.WireProtocolError, match=re.escape("$.requests[0].trace")):
        wire.decode(wire.encode({"t": "batch", "requests": [{**req, "trace": [tp]}]}), wire.TO_COORDINATOR)


def _failing_initializer() -> None:
    raise RuntimeError("no exporter today")


async def test_the_initializer_is_checked_and_a_failing_one_stops_start():
    with pytest.raises(TypeError, match="initializer must be callable"):
        ProcessExecutor(workers=1, initializer="setup")  # type: ignore[arg-type]
    gen = (i for i in range(3))
    with pytest.raises(TypeError, match="initializer cannot be shipped to workers: TypeError: cannot pickle 'generator'"):
        ProcessExecutor(workers=1, initializer=lambda: next(gen))
    ex = ProcessExecutor(workers=1, initializer=_failing_initializer, startup_timeout_s=30)
    with pytest.raises(RuntimeError, match="before it connected"):
        await ex.start()
    await ex.aclose()


NO_OTEL = """
import asyncio, sys
import carmulti
from carmulti import AgentSpec, ProcessExecutor, SharedInfra, Supervisor, Swarm, tracing
from carmulti.executors import agent_run

def boom(*a, **k):
    raise AssertionError("a tracing hook ran without the OpenTelemetry API")

for name in ("agent_trace", "tool_span", "inject", "context_for", "tracer"):
    setattr(tracing, name, boom)

class R:
    async def run(self, spec, task, runtime, mailbox):
        import sys
        from carmulti import tracing
        return f"{tracing.ENABLED} {'opentelemetry' in sys.modules}"

async def main():
    assert tracing.ENABLED is False
    assert not hasattr(Swarm.run, "__wrapped__") and not hasattr(Supervisor.run, "__wrapped__")  # not wrapped
    for ex in (None, ProcessExecutor(workers=1)):
        async with SharedInfra(**({"executor": ex} if ex else {})) as infra:
            res = await Swarm([AgentSpec(f"a{i}") for i in range(50)]).run("t", R(), infra)
            assert {o.answer for o in res.outputs} == {"False False"}, {o.answer for o in res.outputs}
    assert not any(m.split(".")[0] == "opentelemetry" for m in sys.modules)
    print("ok")

if __name__ == "__main__":
    carmulti.run(main())
"""


def test_without_the_api_everything_runs_and_no_tracing_code_runs(tmp_path: pathlib.Path):
    """``opentelemetry`` shadowed by a package that refuses to import (on ``PYTHONPATH``, so spawned
    workers see it too): the patterns are not wrapped, no hook is entered, OpenTelemetry is never imported."""
    block = tmp_path / "block" / "opentelemetry"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text('raise ImportError("opentelemetry is blocked for this test")\n')
    script = tmp_path / "no_otel.py"
    script.write_text(NO_OTEL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block.parent), str(ROOT)])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def _readme_tracing_block() -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", readme, flags=re.S | re.M)
    return next(b for b in blocks if "initializer=" in b)


def test_the_readme_tracing_example_runs_and_parents_worker_spans(tmp_path: pathlib.Path):
    script = tmp_path / "traced.py"
    script.write_text(_readme_tracing_block())
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    spans = [_from_json(json.loads(line)) for line in proc.stdout.splitlines() if line.startswith("{")]
    wf = _one(spans, "invoke_workflow swarm")
    agents = [s for s in spans if s.name.startswith("invoke_agent ")]
    assert len(agents) == 4 and {s.parent_id for s in agents} == {wf.span_id}
    assert {s.kind for s in agents} == {"CLIENT"} and {s.trace_id for s in agents} == {wf.trace_id}


LATE_GLOBAL = """
import time
import carmulti
from carmulti import AgentSpec, SharedInfra, Swarm, tracing
from carmulti.testing import EchoRunner
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

async def main():
    async with SharedInfra() as infra:
        await Swarm([AgentSpec("early")]).run("t", EchoRunner(), infra)  # no provider yet: no span
        exp = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exp))
        trace.set_tracer_provider(provider)  # OpenTelemetry's global one, set late
        time.sleep(tracing.LOOK_AGAIN_S)
        await Swarm([AgentSpec("late")]).run("t", EchoRunner(), infra)
    print(sorted(s.name for s in exp.get_finished_spans()))

carmulti.run(main())
"""


def test_a_global_provider_set_late_is_seen_within_the_look_again_interval():
    """In a subprocess: OpenTelemetry's global provider can be set only once per process."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(LATE_GLOBAL)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['invoke_agent late', 'invoke_workflow swarm']"
