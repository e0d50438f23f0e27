"""Property tests (Hypothesis): truncate, normalize_vote, tally."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from carmulti import AgentOutput, normalize_vote, truncate
from carmulti.patterns.vote import tally

FAST = settings(max_examples=150, deadline=None)

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


# -- truncate ---------------------------------------------------------------------------------------


@FAST
@given(text, st.integers(min_value=0, max_value=120))
def test_truncate_properties(s, n):
    out = truncate(s, n)
    assert s.startswith(out)  # a prefix, never a split character
    assert len(out.encode("utf-8")) <= n
    if len(s.encode("utf-8")) <= n:
        assert out == s  # identity when it fits
    else:
        nxt = s[len(out)]
        assert len((out + nxt).encode("utf-8")) > n  # maximal
    out.encode("utf-8").decode("utf-8")  # valid text


@FAST
@given(text)
def test_truncate_at_full_length_is_identity(s):
    assert truncate(s, len(s.encode("utf-8"))) == s


# -- normalize_vote -------------------------------------------------------------------------------------

words = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyzäöüß0123456789", min_size=1, max_size=6),
                 min_size=1, max_size=5)
spaces = st.text(alphabet=" \t\n", min_size=1, max_size=3)


@FAST
@given(words, st.data())
def test_normalize_vote_invariant_under_case_and_whitespace(ws, data):
    base = " ".join(ws)
    seps = [data.draw(spaces) for _ in range(len(ws) - 1)] + [""]
    messy = data.draw(st.text(alphabet=" \t\n", max_size=3))
    for w, sep in zip(ws, seps):
        messy += "".join(c.upper() if data.draw(st.booleans()) else c for c in w) + sep
    messy += data.draw(st.sampled_from(["", ".", " .", ". "])) + data.draw(st.text(alphabet=" \t\n", max_size=3))
    assert normalize_vote(messy) == normalize_vote(base)
    assert normalize_vote(base.upper()) == normalize_vote(base)
    assert normalize_vote(normalize_vote(base)) == normalize_vote(base)  # idempotent


@FAST
@given(text)
def test_normalize_vote_is_idempotent_and_stripped(s):
    n = normalize_vote(s)
    assert n == n.strip()
    assert "  " not in n
    assert n == n.casefold() or normalize_vote(n) == n


# -- tally ---------------------------------------------------------------------------------------------

vote_text = st.sampled_from(["Paris", "paris", " PARIS. ", "London", "london.", "Rome", "rome", "x"])
vote = st.one_of(vote_text.map(lambda a: ("ok", a)), st.just(("fail", None)))


def outputs(vs):
    return [AgentOutput(f"v{i}", a or "", error=None if kind == "ok" else "failed") for i, (kind, a) in enumerate(vs)]


@FAST
@given(st.lists(vote, max_size=12))
def test_tally_invariants(vs):
    outs = outputs(vs)
    winner, ratio, size = tally(outs)
    ok = [o for o in outs if o.succeeded]
    assert 0.0 <= ratio <= 1.0
    if not ok:
        assert (winner, ratio, size) == ("[no agent produced an answer]", 0.0, 0)
        return
    groups: dict[str, list[int]] = {}
    for i, o in enumerate(ok):
        groups.setdefault(normalize_vote(o.answer), []).append(i)
    largest = max(len(g) for g in groups.values())
    key = normalize_vote(winner)
    assert len(groups[key]) == largest == size  # winner comes from a largest group
    assert ratio == size / len(ok)
    # Ties: the largest group whose first vote comes first in agent order wins.
    assert groups[key][0] == min(g[0] for g in groups.values() if len(g) == largest)
    assert winner == ok[groups[key][0]].answer  # original text of its first vote


@FAST
@given(st.lists(vote, min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_tally_permuting_within_winner_group_keeps_winner_value(vs, rnd):
    outs = outputs(vs)
    winner, ratio, _ = tally(outs)
    key = normalize_vote(winner)
    idx = [i for i, o in enumerate(outs) if o.succeeded and normalize_vote(o.answer) == key]
    texts = [outs[i].answer for i in idx]
    rnd.shuffle(texts)
    for i, t in zip(idx, texts):
        outs[i] = AgentOutput(outs[i].name, t)
    w2, r2, _ = tally(outs)
    assert normalize_vote(w2) == key
    assert r2 == ratio


@FAST
@given(vote_text, st.integers(min_value=1, max_value=8))
def test_tally_unanimous_winner_is_first_answer(answer, n):
    # Unanimous in normalized form, with different surface texts.
    variants = [answer, answer.upper(), f"  {answer} ", answer.swapcase() + "\n"]
    outs = [AgentOutput(f"v{i}", variants[i % len(variants)]) for i in range(n)]
    winner, ratio, size = tally(outs)
    assert winner == outs[0].answer
    assert ratio == 1.0 and size == n
