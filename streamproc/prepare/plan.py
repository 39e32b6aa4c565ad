"""Sample plans: which messages of a conversation each training sample holds and which of its
assistant turns it trains. Pure: it sees token costs and indices, never text.

A sample holds the conversation's head (the system prompt and the first user message, the task),
then a contiguous run of whole turns ending with its trained turns. Its trained turns are
consecutive trained turns whose renders extend one another (`joins`); before the first of them it
holds at least the turn that turn answers, then as many earlier whole turns as fit, the most recent
first (the oldest are dropped first). A trained turn that cannot fit with the head and the turn it
answers is not trained; every other trained turn is trained in exactly one sample.

Sizes are estimated from `cost` and checked with `measure` (the exact token count of a sample's
render): a sample measured over budget loses its oldest history turn first, then its last trained
turn (which goes to the next sample), and a turn that does not fit even alone is not trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass(slots=True, frozen=True)
class Sample:
    messages: tuple[int, ...]  # indices of the conversation's messages it holds, in order
    trained: tuple[int, ...]  # indices of the assistant messages it trains (among `messages`)
    shortened: bool = False  # some message before its first trained turn is not in it


@dataclass(slots=True)
class Plan:
    samples: list[Sample] = field(default_factory=list)
    untrained: list[tuple[int, str]] = field(default_factory=list)  # (message index, why it is not trained)

    @property
    def turns_trained(self) -> int:
        return sum(len(s.trained) for s in self.samples)

    @property
    def turns_shortened(self) -> int:
        """Trained turns whose sample lacks some earlier message of the conversation."""
        return sum(len(s.trained) for s in self.samples if s.shortened)


def plan_samples(
    cost: Sequence[int],
    turn_start: Sequence[int],
    head: int,
    trained: Sequence[int],
    joins: Sequence[bool],
    budget: int | None,
    measure: Callable[[Sample], int] | None = None,
) -> Plan:
    """The samples of one conversation.

    cost[i]: estimated tokens of message i in a render; turn_start[i]: index of the first message
    of message i's whole turn (tool responses of one turn are several messages); head: messages
    [0, head) open every sample; trained: indices of the assistant messages to train, increasing,
    each >= head; joins[k]: trained[k] may share a sample with trained[k - 1]; budget: most tokens
    of a sample (None: no limit); measure: exact tokens of a sample (default: the sum of costs).
    """
    measure = measure or (lambda s: sum(cost[i] for i in s.messages))
    plan = Plan()
    head_ids = tuple(range(head))
    prefix = [0]
    for c in cost:
        prefix.append(prefix[-1] + c)

    def est(a: int, b: int) -> int:  # head plus messages [a, b)
        return prefix[head] + prefix[b] - prefix[a]

    def sample(first: int, ts: Sequence[int]) -> Sample:
        return Sample(head_ids + tuple(range(first, ts[-1] + 1)), tuple(ts), first > head)

    k = 0
    while k < len(trained):
        t = trained[k]
        need = max(head, turn_start[t - 1]) if t > head else head  # the turn it answers
        if budget is not None and est(need, t + 1) > budget:
            plan.untrained.append((t, _why(est(need, t + 1), budget)))
            k += 1
            continue
        j = k  # trained turns k..j go in this sample
        while j + 1 < len(trained) and joins[j + 1] and (budget is None or est(need, trained[j + 1] + 1) <= budget):
            j += 1
        first = need
        while first > head and (budget is None or est(turn_start[first - 1], trained[j] + 1) <= budget):
            first = turn_start[first - 1]
        s = sample(first, trained[k : j + 1])
        while budget is not None and (n := measure(s)) > budget:
            if first < need:  # the oldest history turn goes first
                first = next(i for i in range(first + 1, need + 1) if i == need or turn_start[i] == i)
            elif j > k:  # then the last trained turn, which the next sample takes
                j -= 1
            else:
                break
            s = sample(first, trained[k : j + 1])
        else:
            plan.samples.append(s)
            k = j + 1
            continue
        plan.untrained.append((t, _why(n, budget)))
        k += 1
    return plan


def _why(tokens: int, budget: int) -> str:
    return f"the system prompt, the task, the turn it answers and this turn take {tokens} tokens, seq_len is {budget}"
