"""The curator: compiled conditions and the dedup index, deciding row by row in input order whether a row is kept."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import pyarrow as pa

from streamproc.analyze.features import feature_schema
from streamproc.curate.conditions import Condition, ConditionEngine, ConditionError
from streamproc.curate.dedup import NUM_PERM, SHINGLE_WORDS, NearIndex
from streamproc.curate.options import DEDUP_MODES
from streamproc.records import Tally

if TYPE_CHECKING:
    from streamproc.curate.stage import CuratedSplit


@dataclass(slots=True)
class Accounting:
    """Rows read, kept, removed (by the first condition they fail, or by dedup) and rejected."""

    read: int = 0
    kept: int = 0
    rejected: int = 0
    removed_by: dict[str, int] = field(default_factory=dict)  # first failing condition / dedup -> rows
    failing: dict[str, int] = field(default_factory=dict)  # condition -> rows failing it (overlaps)

    @property
    def removed(self) -> int:
        return sum(self.removed_by.values())

    def count(self, reasons: Sequence[str | None]) -> None:
        """Count decided rows: kept (None) or removed by their reason's name."""
        for reason in reasons:
            if reason is None:
                self.kept += 1
            else:
                self.removed_by[reason.split(" ")[0]] += 1

    def add(self, other: "Accounting") -> None:
        self.read += other.read
        self.kept += other.kept
        self.rejected += other.rejected
        for mine, theirs in ((self.removed_by, other.removed_by), (self.failing, other.failing)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v

    def to_json(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "kept": self.kept,
            "removed": self.removed,
            "rejected": self.rejected,
            "removed_by": self.removed_by,
            "failing": self.failing,
        }


class Curator:
    """Decides keep or remove for each row, in input order: the conditions first (the first one a
    row fails is its reason), then the dedup index over the rows the conditions keep."""

    def __init__(self, conditions: Sequence[Condition] = (), dedup: str | None = None, threshold: float = 0.8, tokens: bool = False):
        if dedup is not None and dedup not in DEDUP_MODES:
            raise ConditionError(f"--dedup {dedup!r}: expected one of {', '.join(DEDUP_MODES)}")
        if not 0 < threshold <= 1:
            raise ConditionError(f"--threshold {threshold}: must be above 0 and at most 1")
        self.engine = ConditionEngine(conditions, feature_schema(tokens))
        self.dedup = dedup
        self.threshold = threshold
        self.acct = Accounting(failing={c.name: 0 for c in conditions}, removed_by={c.name: 0 for c in conditions})
        if dedup:
            self.acct.removed_by[f"dedup_{dedup}"] = 0
        self._seen: dict[bytes, int] = {}  # exact: digest -> input position of the kept row
        self._near = NearIndex(threshold) if dedup == "near" else None
        self._position = 0  # rows decided so far (input order)

    @property
    def conditions(self) -> tuple[Condition, ...]:
        return self.engine.conditions

    def decide(self, batch: pa.Table, keys: Sequence[Any] | None) -> list[str | None]:
        """Per row of `batch` (features, in input order): None to keep, else the reason."""
        reasons = self.engine.judge(batch, self.acct)
        for i, reason in enumerate(reasons):
            position = self._position
            self._position += 1
            if reason is None and self.dedup and keys is not None:
                reasons[i] = self._duplicate(keys[i], position)
        self.acct.count(reasons)
        return reasons

    def decide_split(self, part: "CuratedSplit", tally: Tally) -> list[str | None]:
        """decide() over one split's features, counting its rows read and rejected: splits are
        given in plan order, so the decisions are the same for any number of workers."""
        self.acct.read += tally.read
        self.acct.rejected += len(tally.rejected)
        return self.decide(part.features, part.keys)

    def _duplicate(self, key: Any, position: int) -> str | None:
        if self._near is None:
            first = self._seen.setdefault(key, position)
            return None if first == position else f"dedup_exact (same text as good row {first} of the input, counted from 0)"
        similar = self._near.first_similar(key, position)
        return None if similar is None else f"dedup_near (similar to good row {similar} of the input, counted from 0)"

    def index_bytes(self) -> int:
        """Memory the dedup index holds, measured by walking its containers."""
        if self._near is not None:
            return self._near.nbytes()
        return _deep_size(self._seen)

    def summary(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.acct.to_json()
        doc["conditions"] = {c.name: c.sql for c in self.conditions}
        if self.dedup:
            size = self.index_bytes()
            per_million = round(size / max(self.acct.kept, 1) * 1e6 / 2**20, 1)
            doc["dedup"] = {"mode": self.dedup, "index_bytes": size, "index_mib_per_million_rows": per_million}
            if self.dedup == "near":
                doc["dedup"].update(threshold=self.threshold, num_perm=NUM_PERM, shingle_words=SHINGLE_WORDS)
        return doc


def _deep_size(obj: Any) -> int:
    import sys

    seen: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif hasattr(o, "__dict__"):
            stack.append(vars(o))
    return total
