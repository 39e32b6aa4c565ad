"""Property tests of the sample plan (streamproc.prepare.plan): every trained turn is trained
exactly once per conversation or listed as not trained because it cannot fit; its sample holds the
system prompt, the task and the turn it answers; every sample fits the budget, measured exactly."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from streamproc.prepare.plan import Sample, plan_samples


@st.composite
def conversations(draw):
    head = draw(st.integers(0, 2))
    n = draw(st.integers(head + 1, 30))
    cost = draw(st.lists(st.integers(1, 60), min_size=n, max_size=n))
    # Whole turns: runs of messages (a tool turn unwrapped into several responses).
    turn_start, i = [], 0
    while i < n:
        run = draw(st.integers(1, 3)) if i >= head else 1
        turn_start += [i] * min(run, n - i)
        i += run
    firsts = sorted({t for t in turn_start if t >= head})
    trained = sorted(draw(st.sets(st.sampled_from(firsts), min_size=1)))  # a trained turn is a whole turn
    joins = [False] + draw(st.lists(st.booleans(), min_size=len(trained) - 1, max_size=len(trained) - 1))
    budget = draw(st.none() | st.integers(10, 600))
    wobble = draw(st.integers(0, 7))  # exact sizes differ from the estimates, as renders do
    return cost, turn_start, head, trained, joins, budget, wobble


def exact(cost, wobble):
    return lambda s: sum(cost[i] for i in s.messages) + (len(s.messages) * wobble) % 11


def answered(turn_start, head, t):
    return max(head, turn_start[t - 1]) if t > head else head


@settings(max_examples=400, deadline=None)
@given(conversations())
def test_plan_properties(conv):
    cost, turn_start, head, trained, joins, budget, wobble = conv
    measure = exact(cost, wobble)
    plan = plan_samples(cost, turn_start, head, trained, joins, budget, measure)

    got = [t for s in plan.samples for t in s.trained]
    left = [t for t, _ in plan.untrained]
    assert sorted(got + left) == trained and len(set(got)) == len(got)  # each trained once, or listed
    assert got == sorted(got)  # samples in conversation order
    for s in plan.samples:
        first, last = s.trained[0], s.trained[-1]
        assert s.messages[:head] == tuple(range(head))  # system prompt and task
        rest = s.messages[head:]
        assert rest == tuple(range(rest[0], last + 1)) if rest else first < head  # whole turns, contiguous, ending with its last trained turn
        need = answered(turn_start, head, first)
        assert set(range(need, first)) <= set(s.messages)  # the turn its first trained turn answers
        assert not rest or rest[0] == turn_start[rest[0]] or rest[0] == head  # history starts at a whole turn
        assert s.shortened == bool(rest and rest[0] > head)
        for a, b in zip(s.trained, s.trained[1:]):  # consecutive trained turns whose renders join
            assert trained.index(b) == trained.index(a) + 1 and joins[trained.index(b)]
        if budget is not None:
            assert measure(s) <= budget
    for t, why in plan.untrained:  # not trained only when even the least context does not fit
        assert budget is not None and "seq_len" in why
        need = answered(turn_start, head, t)
        alone = Sample(tuple(range(head)) + tuple(range(need, t + 1)), (t,))
        assert measure(alone) > budget
    if budget is None:
        assert not plan.untrained and not any(s.shortened for s in plan.samples)
        assert len(plan.samples) == 1 + sum(not j for j in joins[1:])


def test_history_is_kept_newest_first_and_dropped_oldest_first():
    # head = system + task; six one-message turns of 10 tokens; train the last one.
    cost = [30, 5] + [10] * 6
    plan = plan_samples(cost, list(range(8)), 2, [7], [False], budget=35 + 30)
    (s,) = plan.samples
    assert s.messages == (0, 1, 5, 6, 7) and s.shortened  # the three most recent turns fit; 2..4 dropped
    assert plan.turns_shortened == 1 and plan.turns_trained == 1


def test_a_turn_that_cannot_fit_with_its_context_is_not_trained():
    cost = [30, 5, 50, 10]
    plan = plan_samples(cost, list(range(4)), 2, [3], [False], budget=80)
    assert plan.samples == [] and plan.untrained[0][0] == 3 and "95 tokens" in plan.untrained[0][1]
