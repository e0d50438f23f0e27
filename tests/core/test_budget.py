"""Unit and multi-process tests for carcore.budget.BudgetCounters."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

from carcore import BudgetCounters

from .conftest import shm_entries


@pytest.fixture
def bc(no_shm_leak):
    c = BudgetCounters(4)
    yield c
    c.close()


def test_create_attrs_and_zero_init(bc):
    assert bc.name.startswith(f"/carmulti-{os.getpid()}-")
    assert bc.slots == 4 and bc.owner and not bc.closed
    assert bc.name[1:] in os.listdir("/dev/shm")
    assert [bc.load(i) for i in range(4)] == [0, 0, 0, 0]
    assert bc.load_f64(0) == 0.0
    assert "owner" in repr(bc)


def test_int_ops(bc):
    assert bc.add(0, 5) == 5
    assert bc.add(0, -7) == -2
    bc.store(1, 2**63 - 1)
    assert bc.load(1) == 2**63 - 1
    assert bc.reserve(2, 3, 10) and bc.reserve(2, 7, 10)
    assert not bc.reserve(2, 1, 10)
    assert bc.load(2) == 10
    assert bc.reserve(2, 0, 10)
    assert not bc.reserve(3, 1, 0) and bc.reserve(3, 0, 0)
    bc.store(3, 5)
    assert not bc.reserve(3, 2**63 - 1, 2**63 - 1)  # would overflow: refused, unchanged
    assert bc.load(3) == 5


def test_f64_ops(bc):
    assert bc.add_f64(0, 1.25) == 1.25
    assert bc.add_f64(0, 2) == 3.25
    bc.store_f64(1, -0.5)
    assert bc.load_f64(1) == -0.5


def test_overflow_and_bad_input_leave_counter_unchanged(bc):
    bc.store(0, 2**63 - 10)
    with pytest.raises(OverflowError, match="would overflow int64; the counter is unchanged"):
        bc.add(0, 11)
    assert bc.load(0) == 2**63 - 10
    bc.store(1, -(2**63))
    with pytest.raises(OverflowError):
        bc.add(1, -1)
    assert bc.load(1) == -(2**63)
    with pytest.raises(OverflowError, match="delta=.* does not fit in a signed 64-bit counter"):
        bc.add(2, 2**64)
    with pytest.raises(OverflowError, match="value="):
        bc.store(2, -(2**63) - 1)
    for bad in (1.5, "1", None, True, float("nan")):
        with pytest.raises(TypeError, match="delta must be an int"):
            bc.add(2, bad)
        with pytest.raises(TypeError, match="amount must be an int"):
            bc.reserve(2, bad, 10)
    with pytest.raises(TypeError, match="cap must be an int"):
        bc.reserve(2, 1, 10.0)
    with pytest.raises(ValueError, match="amount must be >= 0, got -1"):
        bc.reserve(2, -1, 10)
    with pytest.raises(ValueError, match="delta must be finite, got nan"):
        bc.add_f64(3, math.nan)
    with pytest.raises(ValueError, match="value must be finite"):
        bc.store_f64(3, math.inf)
    with pytest.raises(TypeError, match="delta must be a float"):
        bc.add_f64(3, "x")
    bc.store_f64(3, 1.7e308)
    with pytest.raises(ValueError, match="would not give a finite float"):
        bc.add_f64(3, 1.7e308)
    assert bc.load_f64(3) == 1.7e308
    assert bc.load(2) == 0


@pytest.mark.parametrize("idx", [4, -1, 100])
def test_index_out_of_range(bc, idx):
    with pytest.raises(IndexError, match=f"slot index {idx} out of range: this BudgetCounters has 4 slots"):
        bc.load(idx)
    with pytest.raises(IndexError):
        bc.add(idx, 1)
    with pytest.raises(TypeError, match="slot index must be an int"):
        bc.load("0")


def test_constructor_validation(no_shm_leak):
    for bad in (0, -1, 1.5, True, 2**21):
        with pytest.raises(ValueError, match="slots must be an int between 1 and"):
            BudgetCounters(bad)
    with pytest.raises(ValueError, match="prefix must be a non-empty str without '/'"):
        BudgetCounters(prefix="a/b")


def test_attach_shares_counters_and_non_owner_close(bc):
    other = BudgetCounters.attach(bc.name)
    assert not other.owner and other.slots == 4 and other.name == bc.name
    other.add(1, 41)
    assert bc.add(1, 1) == 42
    other.close()
    other.close()
    assert other.closed
    assert bc.name[1:] in os.listdir("/dev/shm")  # non-owner close does not unlink
    again = BudgetCounters.attach(bc.name.lstrip("/"))
    assert again.load(1) == 42
    again.close()


def test_attach_missing():
    with pytest.raises(FileNotFoundError, match="no BudgetCounters shared-memory segment named '/carmulti-nope'"):
        BudgetCounters.attach("/carmulti-nope")


def test_close_unlinks_and_use_after_close(no_shm_leak):
    c = BudgetCounters(2)
    name = c.name
    c.close()
    c.close()
    assert c.closed and name[1:] not in os.listdir("/dev/shm")
    for call in (lambda: c.load(0), lambda: c.add(0, 1), lambda: c.reserve(0, 1, 2),
                 lambda: c.store_f64(0, 1.0), lambda: pickle.dumps(c)):
        with pytest.raises(ValueError, match="is closed"):
            call()
    with pytest.raises(FileNotFoundError):
        BudgetCounters.attach(name)


def test_context_manager_and_unlink(no_shm_leak):
    with BudgetCounters(1) as c:
        name = c.name
        c.unlink()
        assert name[1:] not in os.listdir("/dev/shm")
        assert c.add(0, 1) == 1  # mapping stays valid
    assert c.closed


def test_dealloc_unmaps_and_unlinks(no_shm_leak):
    c = BudgetCounters(1)
    name = c.name
    del c
    assert name[1:] not in os.listdir("/dev/shm")


def test_pickle_attaches_as_non_owner(bc):
    bc.add(0, 7)
    copy = pickle.loads(pickle.dumps(bc))
    assert not copy.owner and copy.load(0) == 7
    del copy
    assert bc.name[1:] in os.listdir("/dev/shm")


def test_sweep_stale(no_shm_leak):
    dead = subprocess.run([sys.executable, "-c", "pass"], check=True)
    del dead
    # find a pid that is certainly not alive
    pid = 2**22 - 7
    while True:
        try:
            os.kill(pid, 0)
            pid -= 1
        except ProcessLookupError:
            break
        except PermissionError:
            pid -= 1
    stale = f"carmulti-{pid}-00ff00ff00ff00ff"
    with open(f"/dev/shm/{stale}", "wb") as f:
        f.write(b"\0" * 128)
    live = BudgetCounters(1)
    try:
        removed = BudgetCounters.sweep_stale()
        assert f"/{stale}" in removed
        assert stale not in os.listdir("/dev/shm")
        assert live.name[1:] in os.listdir("/dev/shm")
        assert f"/{stale}" not in BudgetCounters.sweep_stale()
    finally:
        live.close()


# ------------------------------------------------------------------------ multi-process

_CHILD = textwrap.dedent(
    """
    import sys
    from carcore import BudgetCounters
    c = BudgetCounters.attach(sys.argv[1])
    mode, n, cap = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    c.add(2, 1)                      # ready
    while c.load(1) == 0:            # barrier: wait for "go"
        pass
    got = 0
    if mode == "reserve":
        while c.reserve(0, 1, cap):
            got += 1
        # keep trying a little: the cap must still refuse
        for _ in range(1000):
            if c.reserve(0, 1, cap):
                got += 1
    else:
        for _ in range(n):
            c.add(0, 1)
            c.add_f64(3, 0.5)
        got = n
    c.close()
    print(got)
    """
)


def _race(mode: str, nproc: int, n: int, cap: int) -> tuple[list[int], BudgetCounters]:
    c = BudgetCounters(4)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, c.name, mode, str(n), str(cap)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(nproc)
    ]
    try:
        while c.load(2) < nproc:
            if any(p.poll() not in (None, 0) for p in procs):
                break
        c.store(1, 1)  # go
        samples = []
        while any(p.poll() is None for p in procs):
            samples.append(c.load(0))
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err.decode()
            outs.append(int(out))
        if mode == "reserve":
            assert all(0 <= s <= cap for s in samples)
        return outs, c
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_four_processes_race_reserve_exactly_cap():
    before = shm_entries()
    cap = 20_000
    outs, c = _race("reserve", 4, 0, cap)
    try:
        assert sum(outs) == cap
        assert c.load(0) == cap
    finally:
        c.close()
    assert shm_entries() - before == set()


def test_four_processes_add_sum_exact():
    before = shm_entries()
    k = 20_000
    outs, c = _race("add", 4, k, 0)
    try:
        assert outs == [k] * 4
        assert c.load(0) == 4 * k
        assert c.load_f64(3) == 4 * k * 0.5
    finally:
        c.close()
    assert shm_entries() - before == set()


def test_pickled_counters_usable_in_another_process(bc):
    bc.store(0, 5)
    code = "import pickle,sys; c=pickle.loads(sys.stdin.buffer.read()); print(c.owner, c.add(0, 3)); c.close()"
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(bc),
                         capture_output=True, check=True, timeout=60)
    assert out.stdout.split() == [b"False", b"8"]
    assert bc.load(0) == 8
    assert bc.name[1:] in os.listdir("/dev/shm")


def test_add_saturating_stops_at_the_int64_maximum():
    c = BudgetCounters(1)
    try:
        assert c.add_saturating(0, 2**62) == 2**62
        assert c.add_saturating(0, 2**62) == 2**63 - 1  # would overflow: saturates
        assert c.add_saturating(0, 5) == 2**63 - 1
        with pytest.raises(ValueError, match="delta >= 0"):
            c.add_saturating(0, -1)
    finally:
        c.close()
