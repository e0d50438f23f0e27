"""The Ray executor: the process executor's workers, run as async Ray actors across a cluster.

Owns only what differs from :class:`~carmulti.ProcessExecutor` when workers live
on other machines (everything else -- the agent run, scheduling, batching,
services, supervision, the wire -- is the process executor's, unchanged):

* **Where workers start**: :class:`RayLauncher` creates one async actor per
  worker (default: one per alive node, spread over the nodes with node
  affinity), each running the process executor's worker loop
  (:class:`~carmulti.executors.process.worker.WorkerProcess`) inside the actor's
  event loop, many agents at once; ``ping``/``stats`` run in their own
  ``"control"`` concurrency group. An actor's end (``ray.kill``, a lost node)
  is seen when its ``serve`` call fails (Ray's failure detection).
* **How they reach the coordinator**: :class:`TcpTransport` binds the
  coordinator's ROUTER on TCP (the driver's node address, a random port),
  encrypted and authenticated with CURVE keys that only the actors get
  (through Ray), instead of ``ipc://``.
* **The budget**: a worker on another machine cannot map the coordinator's
  shared memory; its agents' budget calls go to the coordinator, which applies
  them to the one budget (``proxies.RemoteBudget``): the cap holds exactly
  across nodes.

Runners, jobs, results and events travel in batches over the same frames as
on the process executor (one Ray call per agent is what this executor avoids);
the runner is shipped once per actor and kept by the coordinator for the
pool's lifetime, so a replacement actor gets it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import zmq

from .. import _validate as V
from .process.executor import ProcessExecutor
from .process.launching import Launcher
from .process.transport import Transport

if TYPE_CHECKING:
    from .base import AgentJob  # noqa: F401

__all__ = ["RayExecutor"]

log = logging.getLogger("carmulti.executors.ray")

_INSTALL = "RayExecutor needs Ray: pip install 'carmulti[ray]' (ray>=2.60)"


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise ImportError(_INSTALL) from exc
    return ray


# -- transport ----------------------------------------------------------------------------------------------------

class TcpTransport(Transport):
    """The coordinator's ROUTER on TCP, for workers on other machines; CURVE-encrypted when available."""

    def open(self) -> None:
        """Bind on every interface at a random port; workers connect to this node's address."""
        ray = _ray()
        sock = self._router()
        self._client: dict[str, str] = {}
        if zmq.has("curve"):
            server_public, server_secret = zmq.curve_keypair()
            client_public, client_secret = zmq.curve_keypair()
            sock.curve_server = True
            sock.curve_secretkey = server_secret
            self._client = {"server_public": server_public.decode(), "public": client_public.decode(),
                            "secret": client_secret.decode()}
        port = sock.bind_to_random_port("tcp://0.0.0.0")
        self.endpoint = f"tcp://{ray.util.get_node_ip_address()}:{port}"
        self._start_reading()

    def client_options(self) -> dict[str, Any]:
        """The CURVE keys a worker needs (given to actors through Ray, never over the socket)."""
        return {"curve": self._client} if getattr(self, "_client", None) else {}


# -- launcher -----------------------------------------------------------------------------------------------------

class RayActorHandle:
    """A worker running in a Ray actor; its end is its ``serve`` call failing or returning."""

    def __init__(self, actor: Any, ref: Any, node_id: str) -> None:
        self.actor = actor
        self.ref = ref
        self.node_id = node_id
        self.pid: int | None = None  # known from the worker's checked hello
        self._fut: asyncio.Future[Any] | None = None
        self._callback: Callable[[], None] | None = None
        self.error: BaseException | None = None
        self._done = False

    def watch(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None]) -> None:
        self._callback = on_exit
        fut = self._fut = asyncio.wrap_future(self.ref.future(), loop=loop)
        fut.add_done_callback(self._ended)

    def _ended(self, fut: asyncio.Future[Any]) -> None:
        self._done = True
        if not fut.cancelled():
            self.error = fut.exception()
        cb, self._callback = self._callback, None
        if cb is not None:
            cb()

    def unwatch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._callback = None

    def alive(self) -> bool:
        return not self._done

    def kill(self) -> None:
        try:
            _ray().kill(self.actor, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - already gone, or Ray shutting down
            log.debug("ray.kill failed: %s", exc)

    def reap(self, timeout_s: float) -> None:
        """Nothing to reap locally: Ray owns the actor's process."""

    def exit_reason(self, pid: int | None) -> str:
        err = self.error
        why = "its serve call returned" if err is None else (str(err).strip().splitlines() or [type(err).__name__])[0]
        if err is not None and "ray.kill" in str(err):
            why = "it was killed with ray.kill"
        elif err is not None and ("node" in str(err).lower() and "died" in str(err).lower()):
            why = "its node died"
        try:
            actor = self.actor._actor_id.hex()[:12]
        except AttributeError:  # pragma: no cover - Ray's handle changed
            actor = "?"
        return f"worker {pid} (Ray actor {actor} on node {self.node_id[:12]}) died: {why}"


class RayLauncher:
    """Starts each worker as an async Ray actor, round-robin over the alive nodes."""

    def __init__(self, max_concurrency: int) -> None:
        self.max_concurrency = max_concurrency
        self._next = itertools.count()

    def prepare(self) -> None:
        _ray()

    def launch(self, cfg: dict[str, Any], name: str) -> RayActorHandle:
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
        if not nodes:
            raise RuntimeError("RayExecutor: the Ray cluster has no alive node")
        node = nodes[next(self._next) % len(nodes)]
        actor = _host_class().options(
            num_cpus=0, max_concurrency=2, name=None,
            # hard affinity: a soft one let Ray's scheduler put actors anywhere (often all on one node);
            # a node that died since the listing fails the actor, which the supervisor replaces elsewhere
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
        return RayActorHandle(actor, actor.serve.remote(cfg), node)

    def release(self, last: bool) -> None:
        """Nothing: the executor shuts down only a Ray it started."""


_HOST: Any = None
_F = TypeVar("_F", bound=Callable[..., Any])


def _host_class() -> Any:
    """The actor class (made on first use: Ray is optional)."""
    global _HOST
    if _HOST is None:
        ray = _ray()

        def control(fn: _F) -> _F:
            """Ray's untyped ``ray.method`` decorator, typed: run ``fn`` in the "control" concurrency group."""
            decorated: _F = ray.method(concurrency_group="control")(fn)
            return decorated

        class AgentHost:
            """One carmulti worker in a Ray actor: runs ``WorkerProcess(cfg).main()`` until stopped."""

            def __init__(self) -> None:
                self.worker: Any = None

            async def serve(self, cfg: dict[str, Any]) -> None:
                import sys

                from .process.worker import WorkerProcess

                # the driver's import path, as multiprocess's spawn gives its children: runners defined
                # in the caller's modules (tests, scripts) unpickle here (entries this node lacks are skipped)
                for entry in reversed(cfg.get("sys_path", ())):
                    if entry not in sys.path and (not entry or os.path.isdir(entry)):
                        sys.path.insert(0, entry)

                self.worker = WorkerProcess(cfg)
                await self.worker.main()

            @control
            async def ping(self) -> dict[str, Any]:
                return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                        "jobs": len(self.worker.jobs) if self.worker is not None else 0}

            @control
            async def stats(self) -> dict[str, Any]:
                w = self.worker
                return {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                        "jobs": len(w.jobs) if w is not None else 0,
                        "rejected_frames": w.rejected if w is not None else 0}

        _HOST = ray.remote(concurrency_groups={"control": 4})(AgentHost)
    return _HOST


# -- the executor -------------------------------------------------------------------------------------------------

class RayExecutor(ProcessExecutor):
    """Runs agents on a Ray cluster: the process executor's workers as async Ray actors.

    Every pattern runs unchanged, with the same outputs, order, state keys,
    events, budget accounting, isolation, mailboxes and fault semantics as the
    local and process executors. Starts lazily on first use, or with
    :meth:`start` / ``async with``.

    The coordinator (this process, the Ray driver) must be reachable over TCP
    from every node (a driver on the head node, or any machine in the
    cluster's network): workers connect back to it. Traffic is CURVE-encrypted
    (keys handed to the actors through Ray).

    Args:
        address: ``None``: use the Ray this process already initialised, else
            start a local one with ``ray.init(address="local", **init_kwargs)``.
            A string is passed to ``ray.init(address=...)`` (``"auto"``,
            ``"ray://host:10001"``) unless Ray is already initialised. The
            executor shuts down only a Ray it started.
        workers: Worker actors; default one per alive node, spread over nodes.
        max_concurrency: Agents running at once in one actor (jobs beyond it
            wait in the coordinator: backpressure, nothing queues in Ray).
        idempotent_retries: Times an agent declared idempotent
            (``metadata={"idempotent": True}``) runs again after its actor or
            node was lost; every other agent is at-most-once.
        init_kwargs: Extra ``ray.init`` arguments when this executor calls it.
        **options: The process executor's tuning knobs (``cancel_grace_s``,
            ``heartbeat_timeout_s``, ``max_restarts``, ``restart_period_s``,
            ``startup_timeout_s``, ``batch_size``, ``max_frame_bytes``, ...).

    Raises:
        ValueError: a bad argument.
        ImportError: Ray is not installed (``pip install 'carmulti[ray]'``), at start.

    Usage::

        async with SharedInfra(executor=RayExecutor(address="auto")) as infra:
            result = await MapReduce(mapper, reducer).run(task, items, runner, infra)
    """

    _transport_type = TcpTransport

    def __init__(self, *, address: str | None = None, workers: int | None = None, max_concurrency: int = 1000,
                 idempotent_retries: int = 1, init_kwargs: dict[str, Any] | None = None, **options: Any) -> None:
        if address is not None and not isinstance(address, str):
            raise ValueError(f"RayExecutor address must be None or a str, got {address!r}")
        self.address = address
        self.init_kwargs = dict(init_kwargs or {})
        self.requested_workers = V.int_at_least(workers, 1, "RayExecutor workers", allow_none=True)
        self.max_concurrency = V.int_at_least(max_concurrency, 1, "RayExecutor max_concurrency")
        self.started_ray = False
        super().__init__(workers=workers or 1, max_inflight_per_worker=self.max_concurrency,
                         idempotent_retries=idempotent_retries, **options)

    def _launcher(self) -> Launcher:
        return RayLauncher(self.max_concurrency)

    def _worker_options(self) -> dict[str, Any]:
        import sys

        return {"remote_budget": True, "sys_path": list(sys.path)}

    def _reset(self) -> None:
        super()._reset()
        self._jobs.remote_budget = True

    async def start(self) -> None:
        """Connect to (or start) Ray, then start one actor per worker and wait for each to connect.

        Raises:
            ImportError: Ray is not installed.
            RuntimeError: an actor did not connect back within ``startup_timeout_s``
                (is this process reachable over TCP from the nodes?).
        """
        if self.running:
            return
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address if self.address is not None else "local", **self.init_kwargs)
            self.started_ray = True
        n = self.requested_workers or max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
        if n != self.config.workers:
            self.config = dataclasses.replace(self.config, workers=n)
            self.workers = n
            self._reset()
        await super().start()

    async def aclose(self) -> None:
        """Stop every actor; shut down Ray if this executor started it. Idempotent."""
        await super().aclose()
        if self.started_ray:
            self.started_ray = False
            _ray().shutdown()

    def _kill_now(self) -> None:
        super()._kill_now()
        if self.started_ray:
            self.started_ray = False
            try:
                _ray().shutdown()
            except Exception:  # noqa: BLE001 - interpreter exit
                pass
