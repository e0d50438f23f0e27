"""In-process executor: each agent is a coroutine on the coordinator's event loop."""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from typing import TYPE_CHECKING, Any, Generator, Sequence

from ..isolation import AgentContext, TaskScope
from ..mailbox import Mailbox
from .base import AgentJob, AgentRun, check_output, exception_text, gather_runs

if TYPE_CHECKING:
    from ..infra import SharedInfra
    from ..runner import AgentRunner

__all__ = ["LocalExecutor"]

log = logging.getLogger("carmulti.executors.local")


class LocalExecutor:
    """Runs agents as asyncio coroutines in the current process (the default executor).

    Blocking code: agents share one event loop, so a runner that blocks it
    (``time.sleep``, CPU-bound work, a synchronous HTTP call) stalls every agent
    and cannot be interrupted by ``agent_timeout_s``. When one step of a runner
    outlasts its timeout, a ``RuntimeWarning`` names the agent and its output is
    the timeout error (``timeout after {n}s``). Run blocking calls with
    ``await asyncio.to_thread(...)``, or run the agents on
    :class:`~carmulti.ProcessExecutor`, which kills a worker whose loop stays
    blocked past an agent's timeout.

    Args:
        cancel_grace_s: After an agent's timeout, how long to wait for the
            cancelled runner to finish, in seconds. A runner that ignores
            cancellation longer than this is abandoned (it keeps running on the
            loop; the process executor kills such a runner with its worker).
    """

    def __init__(self, *, cancel_grace_s: float = 1.0) -> None:
        self.cancel_grace_s = cancel_grace_s
        self._abandoned: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Nothing to start; present for the executor protocol."""

    async def aclose(self) -> None:
        """Cancel runners abandoned after a timeout, if any are still running."""
        tasks, self._abandoned = self._abandoned, set()
        for t in tasks:
            t.cancel()

    async def __aenter__(self) -> "LocalExecutor":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run_batch(self, runner: "AgentRunner", jobs: Sequence[AgentJob], infra: "SharedInfra") -> list[AgentRun]:
        """Run ``jobs`` concurrently; results in job order."""
        return await gather_runs(self, runner, jobs, infra)

    async def run_agent(self, runner: "AgentRunner", job: AgentJob, infra: "SharedInfra") -> AgentRun:
        """Run one agent here; never raises for agent failures (see ``executors.base``)."""
        spec = job.spec
        ctx: AgentContext | None = None
        if job.isolated:
            rt, ctx = infra.make_isolated_runtime(spec.name)
        else:
            rt = infra.make_runtime(agent=spec.name)
        if job.tools:
            for t, schema in job.tools.items():
                rt.register_tool(t, schema, validate=job.validate_job_tools)
        if job.register_spec_tools:
            for t in spec.tools:
                rt.register_tool(t)
        if job.tool_executor is not None:
            rt.set_executor(job.tool_executor)
        mailbox = job.mailbox if job.mailbox is not None else Mailbox()
        timeout = infra.agent_timeout_s
        stepped: _Stepped | None = None
        t0 = time.perf_counter()
        try:
            coro = runner.run(spec, job.task, rt, mailbox)
            if ctx is not None:
                coro = TaskScope.run(ctx, coro)
            if timeout is None:
                result = await coro
            else:
                stepped = _Stepped(coro)
                result = await self._with_timeout(stepped, timeout, spec.name)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # our caller cancelled us
            # the runner itself raised CancelledError (e.g. awaited a task it had cancelled)
            return AgentRun(None, "join error: CancelledError raised by the runner",
                            (time.perf_counter() - t0) * 1000.0, ctx)
        except _Timeout:
            _warn_if_blocking(stepped, timeout, spec.name)
            return AgentRun(None, f"timeout after {timeout}s", (time.perf_counter() - t0) * 1000.0, ctx)
        except Exception as exc:  # noqa: BLE001 - agent failures are values
            return AgentRun(None, exception_text(exc), (time.perf_counter() - t0) * 1000.0, ctx)
        except BaseException as exc:  # noqa: BLE001 - SystemExit, GeneratorExit inside a runner: a crashed agent
            if isinstance(exc, KeyboardInterrupt):
                raise  # the user's Ctrl-C
            return AgentRun(None, f"join error: {type(exc).__name__}: {exc}", (time.perf_counter() - t0) * 1000.0, ctx)
        dur = (time.perf_counter() - t0) * 1000.0
        if _warn_if_blocking(stepped, timeout, spec.name):
            return AgentRun(None, f"timeout after {timeout}s", dur, ctx)
        output, err = check_output(result, spec, dur, rt)
        return AgentRun(output, err, dur, ctx)

    async def _with_timeout(self, coro: Any, timeout: float, name: str) -> Any:
        task = asyncio.ensure_future(coro)
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()  # our caller was cancelled: so is the runner
            raise
        if done:
            return task.result()
        task.cancel()
        done, _ = await asyncio.wait((task,), timeout=self.cancel_grace_s)
        if not done:
            log.warning("agent %r ignored cancellation for %.1fs after its %ss timeout; abandoned", name,
                        self.cancel_grace_s, timeout)
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)
        elif not task.cancelled():
            task.exception()  # mark retrieved: the agent timed out whatever it did after
        raise _Timeout()


class _Timeout(Exception):
    pass


class _Stepped:
    """Drives a runner's coroutine and remembers its longest single step, in seconds.

    A step that runs longer than the agent's timeout blocked the event loop
    (``time.sleep``, CPU-bound code): no timeout can interrupt it in-process.
    Used only when ``agent_timeout_s`` is set.
    """

    __slots__ = ("coro", "longest")

    def __init__(self, coro: Any) -> None:
        self.coro = coro
        self.longest = 0.0

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self.coro
        clock = time.perf_counter
        value: Any = None
        exc: BaseException | None = None
        while True:
            t = clock()
            try:
                y = coro.send(value) if exc is None else coro.throw(exc)
            except StopIteration as stop:
                self._note(clock() - t)
                return stop.value
            except BaseException:
                self._note(clock() - t)
                raise
            self._note(clock() - t)
            try:
                value = yield y
                exc = None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # noqa: BLE001 - forwarded to the runner (cancellation)
                value, exc = None, e

    def _note(self, dt: float) -> None:
        if dt > self.longest:
            self.longest = dt


def _warn_if_blocking(stepped: _Stepped | None, timeout: float | None, name: str) -> bool:
    """Warn (naming the agent) when one step of its runner outlasted its timeout; True if it did."""
    if stepped is None or timeout is None or stepped.longest < timeout:
        return False
    warnings.warn(f"agent {name!r} blocked the event loop for {stepped.longest:.2f}s in one step, past its "
                  f"agent_timeout_s={timeout}s: a timeout cannot interrupt blocking code (time.sleep, CPU-bound "
                  "work) on the local executor; await asyncio.to_thread(...) for blocking calls or run the agents "
                  "on ProcessExecutor", RuntimeWarning, stacklevel=2)
    return True
