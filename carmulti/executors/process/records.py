"""The coordinator's records of the process executor: its settings, its workers, its jobs.

Owns plain data shared by the coordinator's parts (:mod:`.transport`,
:mod:`.supervision`, :mod:`.scheduling`, :mod:`.services`): :class:`ProcessConfig`
(the validated arguments), :class:`RunState` (running / closing),
:class:`WorkerHandle` (one worker process), :class:`PendingJob` and
:class:`Batch` (jobs between ``run_agent``/``run_batch`` and their results).
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..base import AgentJob, AgentRun, Coordination
    from .launching import WorkerProcessHandle
    from .shipping import Shipped

__all__ = ["Batch", "PendingJob", "ProcessConfig", "RunState", "WorkerHandle"]


@dataclass(frozen=True, slots=True)
class ProcessConfig:
    """The process executor's settings (see :class:`~carmulti.ProcessExecutor` for each one's meaning)."""

    workers: int
    start_method: str
    max_restarts: int
    restart_period_s: float
    cancel_grace_s: float
    batch_size: int
    max_inflight_per_worker: int
    hwm: int
    startup_timeout_s: float
    shutdown_timeout_s: float
    rpc_timeout_s: float
    max_frame_bytes: int
    gc_freeze: bool
    idempotent_retries: int
    heartbeat_timeout_s: float


class RunState:
    """Whether the executor runs, and whether it is closing (read by every part)."""

    __slots__ = ("running", "closing", "loop")

    def __init__(self) -> None:
        self.running = False
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None


class WorkerHandle:
    """The coordinator's record of one worker process (slot ``index``, generation ``gen``)."""

    def __init__(self, index: int, gen: int, proc: "WorkerProcessHandle", nonce: str) -> None:
        self.index = index
        self.gen = gen
        self.ident = f"w{index}.{gen}".encode()
        self.proc = proc
        self.nonce = nonce  # its hello must echo it
        self.pid: int | None = proc.pid  # the pid we spawned (a remote worker's: from its checked hello)
        self.ready = False
        self.ready_fut: asyncio.Future[None] | None = None
        self.dead = False
        self.kill_reason: str | None = None
        self.stuck_job: int | None = None
        self.inflight: dict[int, PendingJob] = {}
        self.outbox: list[PendingJob] = []  # assigned, to be encoded and sent at the next flush
        self.setup: list[list[bytes]] = []  # runner/infra frames that must precede the jobs
        self.replies: list[dict[str, Any]] = []
        self.cancels: list[int] = []
        self.backlog: collections.deque[list[bytes]] = collections.deque()
        self.runners: set[int] = set()  # shipped runner ids
        self.infras: set[int] = set()  # shipped coordination ids
        self.request_tasks: dict[int, asyncio.Task[Any]] = {}
        self.ping_n = 0
        self.pong_n = 0
        self.rejected = 0
        self.last_seen = time.monotonic()


class PendingJob:
    """One job between ``run_agent``/``run_batch`` and its result (coordinator side)."""

    __slots__ = ("id", "job", "coordination", "runner", "worker", "fut", "batch", "slot", "deadline", "tasks",
                 "objects", "sent_at", "done", "unsent", "attempts", "runner_entry", "coordination_entry", "trace")

    def __init__(self, jid: int, job: "AgentJob", coordination: "Coordination", runner: Any,
                 runner_entry: "Shipped", coordination_entry: "Shipped") -> None:
        self.id = jid
        self.job = job
        self.coordination = coordination
        self.runner = runner
        self.runner_entry = runner_entry
        self.coordination_entry = coordination_entry
        self.worker: WorkerHandle | None = None
        self.fut: asyncio.Future[AgentRun] | None = None
        self.batch: Batch | None = None
        self.slot = 0
        self.deadline: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[Any]] | None = None  # requests served for it
        self.objects: list[int] | None = None  # mailbox objects pinned for it
        self.sent_at = 0.0
        self.done = False
        self.unsent = True
        self.attempts = 1
        self.trace: dict[str, str] | None = None  # the submitter's trace context (carmulti.tracing)


class Batch:
    """The jobs of one ``run_batch`` call: results in job order, one future."""

    __slots__ = ("runs", "left", "fut")

    def __init__(self, n: int, fut: "asyncio.Future[list[AgentRun]]") -> None:
        self.runs: list[AgentRun | None] = [None] * n
        self.left = n
        self.fut = fut
