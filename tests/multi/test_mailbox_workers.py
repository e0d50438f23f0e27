"""Mailboxes across worker processes: inboxes hosted in the registering agent's worker, puts sent
worker to worker directly, the coordinator's Mailbox as the directory. Every semantic of an
in-process Mailbox holds: bounded inboxes and backpressure, MailboxFull, MailboxSend (same texts),
close on unregister / re-register, order, and no hang when a host worker dies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import pytest

from carmulti import (AgentSpec, Mailbox, MailboxFull, MailboxSend, Message, ProcessExecutor, SharedInfra)
from carmulti.executors import AgentJob

pytestmark = pytest.mark.timeout(60)


async def _wait_for(mailbox: Any, name: str) -> None:
    for _ in range(2000):
        if name in mailbox:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{name!r} never registered")


async def _run(runner: Any, names: list[str], mb: Mailbox, tasks: list[str] | None = None,
               executor: ProcessExecutor | None = None) -> list[Any]:
    """Run one agent per name on a 2-worker executor, all sharing ``mb``; the runs in order."""
    ex = executor or ProcessExecutor(workers=2)
    async with SharedInfra(executor=ex) as infra:
        jobs = [AgentJob(AgentSpec(n), (tasks or [""] * len(names))[i], mailbox=mb) for i, n in enumerate(names)]
        runs = await ex.run_batch(runner, jobs, infra)
    return runs


def _answers(runs: list[Any]) -> list[Any]:
    """The runs' answers, each decoded from the JSON its runner returned."""
    assert all(r.ok for r in runs), [r.error for r in runs]
    return [json.loads(r.output.answer) for r in runs]


class PingPong:
    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> str:
        me, other = ("ping", "pong") if spec.name == "ping" else ("pong", "ping")
        inbox = mailbox.register(me)
        await _wait_for(mailbox, other)
        if me == "ping":
            await mailbox.send(Message(me, other, 0))
        seen = 0
        while True:
            msg = await inbox.recv(timeout_s=20)
            if msg.content >= 200:
                if msg.content == 200:
                    await mailbox.send(Message(me, other, msg.content + 1))
                break
            seen += 1
            await mailbox.send(Message(me, other, msg.content + 1))
        return json.dumps(f"{os.getpid()} {type(inbox).__name__} {seen}")


async def test_ping_pong_between_workers_uses_an_inbox_hosted_in_the_agents_worker():
    a, b = _answers(await _run(PingPong(), ["ping", "pong"], Mailbox()))
    pa, kind_a, na = a.split()
    pb, kind_b, nb = b.split()
    assert pa != pb  # one agent per worker
    assert kind_a == kind_b == "Inbox"  # the real Inbox, local to the worker: recv needs no coordinator
    assert (int(na), int(nb)) == (100, 100)


class Backpressure:
    """bob's inbox holds 2; alice fills it, times out on a third, then waits on a fourth until bob reads."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
        if spec.name == "bob":
            inbox = mailbox.register("bob")
            ctl = mailbox.register("bob-ctl")
            await ctl.recv(timeout_s=20)
            full = inbox.qsize()
            got = [(await inbox.recv(timeout_s=5)).content for _ in range(3)]
            return json.dumps(f"{full} {got}")
        await _wait_for(mailbox, "bob-ctl")
        await mailbox.send(Message("alice", "bob", "m1"))
        await mailbox.send(Message("alice", "bob", "m2"))
        t0 = time.monotonic()
        try:
            await mailbox.send(Message("alice", "bob", "m3"), timeout_s=0.3)
            full = "accepted"
        except MailboxFull as exc:
            full = f"{exc} waited={time.monotonic() - t0 >= 0.29}"
        waiting = asyncio.ensure_future(mailbox.send(Message("alice", "bob", "m4")))
        await asyncio.sleep(0.3)
        blocked = not waiting.done()
        await mailbox.send(Message("alice", "bob-ctl", "drain"))
        await asyncio.wait_for(waiting, 10)
        return json.dumps(f"{blocked} {full}")


async def test_a_full_hosted_inbox_makes_a_sender_in_another_worker_wait_and_time_out():
    bob, alice = _answers(await _run(Backpressure(), ["bob", "alice"], Mailbox(2)))
    assert bob == "2 ['m1', 'm2', 'm4']"
    assert alice == f"True {MailboxFull('bob', 2, 0.3)} waited=True"


class Unregister:
    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
        if spec.name == "bob":
            inbox = mailbox.register("bob")
            ctl = mailbox.register("bob-ctl")
            await ctl.recv(timeout_s=20)
            mailbox.unregister("bob")
            kept = inbox.try_recv().content  # accepted before the unregister: still readable
            await mailbox.send(Message("bob", "alice", "unregistered"))
            return json.dumps(f"{kept} {'bob' in mailbox} {inbox.closed}")
        me = mailbox.register("alice")
        await _wait_for(mailbox, "bob-ctl")
        await mailbox.send(Message("alice", "bob", "first"))  # direct: the route is cached now
        await mailbox.send(Message("alice", "bob-ctl", "go"))
        await me.recv(timeout_s=20)
        out = []
        for to in ("bob", "carol"):
            try:
                await mailbox.send(Message("alice", to, "again"))
                out.append("sent")
            except MailboxSend as exc:
                out.append(str(exc))
        return json.dumps(out)


async def test_mailbox_send_after_unregister_and_to_unknown_names_has_the_in_process_texts():
    local = Mailbox()
    texts = []
    for to in ("bob", "carol"):
        with pytest.raises(MailboxSend) as ei:
            await local.send(Message("alice", to, "x"))
        texts.append(str(ei.value))
    bob, alice = _answers(await _run(Unregister(), ["bob", "alice"], Mailbox()))
    assert bob == "first False True"
    assert alice == texts == ["mailbox send error: no agent 'bob'", "mailbox send error: no agent 'carol'"]


class Reregister:
    """bob (worker A) registers "x" (capacity 1); alice (worker B) fills it, waits on a second put,
    then registers "x" herself: the old inbox closes, her waiting put fails, new puts reach her."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
        if spec.name == "bob":
            old = mailbox.register("x")
            ctl = mailbox.register("bob-ctl")
            await ctl.recv(timeout_s=20)
            return json.dumps(f"{os.getpid()} {old.closed} {old.try_recv().content} {old.try_recv()}")
        await _wait_for(mailbox, "bob-ctl")
        await mailbox.send(Message("alice", "x", "m1"))
        waiting = asyncio.ensure_future(mailbox.send(Message("alice", "x", "m2")))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        mine = mailbox.register("x")
        try:
            await asyncio.wait_for(waiting, 10)
            err = "delivered"
        except MailboxSend as exc:
            err = str(exc)
        await mailbox.send(Message("alice", "x", "m3"))
        got = (await mine.recv(timeout_s=5)).content
        await mailbox.send(Message("alice", "bob-ctl", "done"))
        return json.dumps([os.getpid(), err, got])


async def test_registering_a_name_again_on_another_worker_closes_the_old_inbox():
    bob, alice = _answers(await _run(Reregister(), ["bob", "alice"], Mailbox(1)))
    pid, closed, kept, rest = bob.split()
    assert int(pid) != alice[0]
    assert (closed, kept, rest) == ("True", "m1", "None")
    assert alice[1:] == ["mailbox send error: inbox of 'x' was closed while the message waited for room; it was "
                         "not delivered", "m3"]


class Listener:
    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
        inbox = mailbox.register(spec.name)
        return json.dumps([(await inbox.recv(timeout_s=20)).content for _ in range(int(task))])


async def test_coordinator_side_send_and_broadcast_reach_inboxes_hosted_in_workers():
    mb = Mailbox()
    ex = ProcessExecutor(workers=2)
    async with SharedInfra(executor=ex) as infra:
        jobs = [AgentJob(AgentSpec(n), "2", mailbox=mb) for n in ("a", "b")]
        runs = asyncio.ensure_future(ex.run_batch(Listener(), jobs, infra))
        for n in ("a", "b"):
            await _wait_for(mb, n)
        await mb.send(Message("coord", "a", "direct"))
        await mb.send(Message("coord", "b", "direct"))
        assert await mb.broadcast(Message("coord", "", "all")) == 2
        out = await asyncio.wait_for(runs, 20)
        assert _answers(out) == [["direct", "all"], ["direct", "all"]]
        # the jobs ended: the inboxes outlive them (up to capacity), now in the coordinator
        await mb.send(Message("coord", "a", "late"))
    assert sorted(mb.names()) == ["a", "b"]


class Finished:
    """bob registers and ends at once; alice sends to bob's inbox after bob's job ended."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
        if spec.name == "bob":
            mailbox.register("bob")
            return json.dumps("done")
        await _wait_for(mailbox, "bob")
        await asyncio.sleep(0.5)
        await mailbox.send(Message("alice", "bob", 1))
        await mailbox.send(Message("alice", "bob", 2))
        try:
            await mailbox.send(Message("alice", "bob", 3), timeout_s=0.2)
        except MailboxFull as exc:
            return json.dumps(str(exc))
        return json.dumps("accepted")


async def test_a_finished_agents_hosted_inbox_still_accepts_messages_up_to_capacity():
    _, alice = _answers(await _run(Finished(), ["bob", "alice"], Mailbox(2)))
    assert alice == str(MailboxFull("bob", 2, 0.2))


class InOrder:
    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
        if spec.name == "bob":
            inbox = mailbox.register("bob")
            got = []
            while len(got) < 300:
                try:  # receives cancelled by timeouts lose nothing
                    got.append((await asyncio.wait_for(inbox.recv(), 0.001)).content)
                except TimeoutError:
                    pass
            return json.dumps(got == list(range(300)))
        await _wait_for(mailbox, "bob")
        for i in range(300):
            await mailbox.send(Message("alice", "bob", i))
        return json.dumps(True)


async def test_one_senders_messages_arrive_in_order_through_a_small_inbox():
    assert _answers(await _run(InOrder(), ["bob", "alice"], Mailbox(4))) == [True, True]


class HostDies:
    """bob tells the coordinator its pid and waits; alice fills bob's inbox and waits on one more put."""

    async def run(self, spec: AgentSpec, task: str, runtime: Any, mailbox: Any) -> Any:
        if spec.name == "bob":
            mailbox.register("bob")
            await mailbox.send(Message("bob", "coord", os.getpid()))
            await asyncio.sleep(60)
            return json.dumps("not killed")
        await _wait_for(mailbox, "bob")
        await mailbox.send(Message("alice", "bob", 1))
        out = []
        waiting = asyncio.ensure_future(mailbox.send(Message("alice", "bob", 2)))
        await mailbox.send(Message("alice", "coord", "waiting"))
        for fut in (waiting, None):
            try:
                await asyncio.wait_for(fut if fut is not None else mailbox.send(Message("alice", "bob", 3)), 20)
                out.append("sent")
            except MailboxSend as exc:
                out.append(str(exc))
        return json.dumps(out)


async def test_killing_the_host_worker_fails_pending_and_later_sends_naming_it():
    mb = Mailbox(1)
    coord = mb.register("coord")  # an inbox in the coordinator, next to worker-hosted ones
    ex = ProcessExecutor(workers=2)
    async with SharedInfra(executor=ex) as infra:
        jobs = [AgentJob(AgentSpec(n), "", mailbox=mb) for n in ("bob", "alice")]
        runs = asyncio.ensure_future(ex.run_batch(HostDies(), jobs, infra))
        notes = [(await coord.recv(timeout_s=20)).content for _ in range(2)]
        pid = next(n for n in notes if isinstance(n, int))
        await asyncio.sleep(0.3)  # alice's second put waits at bob's worker
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        bob, alice = await asyncio.wait_for(runs, 30)
        assert time.monotonic() - t0 < 10
    assert not bob.ok and str(pid) in bob.error
    assert alice.ok, alice.error
    pending, later = json.loads(alice.output.answer)
    assert pending.startswith("mailbox send error: inbox of 'bob' was hosted by a worker that was lost") and \
        str(pid) in pending
    assert later.startswith("mailbox send error: inbox of 'bob' was hosted by a worker that was lost") and \
        str(pid) in later



async def test_ray_workers_put_through_the_coordinator_with_the_same_semantics(ray_cluster):
    from carmulti import RayExecutor

    bob, alice = _answers(await _run(Backpressure(), ["bob", "alice"], Mailbox(2),
                                     executor=RayExecutor(address=ray_cluster.address)))
    assert bob == "2 ['m1', 'm2', 'm4']"
    assert alice == f"True {MailboxFull('bob', 2, 0.3)} waited=True"
    bob, alice = _answers(await _run(Unregister(), ["bob", "alice"], Mailbox(),
                                     executor=RayExecutor(address=ray_cluster.address)))
    assert bob == "first False True"
    assert alice == ["mailbox send error: no agent 'bob'", "mailbox send error: no agent 'carol'"]


async def test_a_malformed_peer_frame_is_rejected_and_the_worker_keeps_serving():
    ex = ProcessExecutor(workers=2)
    async with SharedInfra(executor=ex) as infra:
        await infra.start()
        path = os.path.join(ex._transport.dir, "p0.0")
        for body in (b"{not", b'{"t": "boom"}', b'{"t": "put", "rid": "x"}', b"x" * 70_000_000):
            junk = len(body).to_bytes(4, "big") + (body if len(body) < 100 else body[:16])  # the last: too big
            _, w = await asyncio.open_unix_connection(path)
            w.write(junk)
            await w.drain()
            w.close()
            await w.wait_closed()
        mb = Mailbox()
        jobs = [AgentJob(AgentSpec(n), "", mailbox=mb) for n in ("ping", "pong")]
        runs = await ex.run_batch(PingPong(), jobs, infra)
        pids = ex.pids
    assert ex.restarts == 0
    assert {int(a.split()[0]) for a in _answers(runs)} == set(pids)  # worker 0 still runs agents
