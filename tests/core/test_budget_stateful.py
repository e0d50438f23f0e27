"""Hypothesis state machine: BudgetCounters (owner + an attached view) vs. int model."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from carcore import BudgetCounters

SLOTS = 3
I64 = st.integers(-(2**63), 2**63 - 1)
SMALL = st.integers(-1000, 1000)
CAP = 500


class BudgetMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.owner = BudgetCounters(SLOTS, prefix="carmulti")
        self.view = BudgetCounters.attach(self.owner.name)
        self.model = [0] * SLOTS

    def teardown(self):
        self.view.close()
        self.owner.close()

    def pick(self, which):
        return self.owner if which else self.view

    @rule(which=st.booleans(), i=st.integers(0, SLOTS - 1), delta=SMALL | I64)
    def add(self, which, i, delta):
        new = self.model[i] + delta
        if -(2**63) <= new < 2**63:
            assert self.pick(which).add(i, delta) == new
            self.model[i] = new
        else:
            try:
                self.pick(which).add(i, delta)
            except OverflowError:
                pass
            else:
                raise AssertionError("overflow not detected")

    @rule(which=st.booleans(), i=st.integers(0, SLOTS - 1), amount=st.integers(0, 200))
    def reserve(self, which, i, amount):
        ok = self.pick(which).reserve(i, amount, CAP)
        expect = self.model[i] + amount <= CAP
        assert ok == expect
        if ok:
            self.model[i] += amount

    @rule(i=st.integers(0, SLOTS - 1), amount=st.integers(-100, -1))
    def reserve_negative(self, i, amount):
        try:
            self.owner.reserve(i, amount, CAP)
        except ValueError:
            pass
        else:
            raise AssertionError("negative amount accepted")

    @rule(which=st.booleans(), i=st.integers(0, SLOTS - 1), value=st.integers(-100, CAP))
    def store(self, which, i, value):
        self.pick(which).store(i, value)
        self.model[i] = value

    @rule(i=st.integers(0, SLOTS - 1), bad=st.sampled_from([1.0, "1", None, float("nan")]))
    def bad_input(self, i, bad):
        for call in (lambda: self.owner.add(i, bad), lambda: self.owner.reserve(i, bad, CAP)):
            try:
                call()
            except TypeError:
                pass
            else:
                raise AssertionError("bad input accepted")

    @invariant()
    def matches_model(self):
        for i in range(SLOTS):
            assert self.owner.load(i) == self.model[i]
            assert self.view.load(i) == self.model[i]


BudgetMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=30, deadline=None)
TestBudgetMachine = BudgetMachine.TestCase
