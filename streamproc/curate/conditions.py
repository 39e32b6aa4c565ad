"""Conditions over features: SQL (or a preset) evaluated by DuckDB over Arrow batches of feature records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa

from streamproc.analyze.features import TOKEN_FEATURES

if TYPE_CHECKING:
    from streamproc.curate.curator import Accounting


@dataclass(slots=True, frozen=True)
class Condition:
    name: str
    sql: str


PRESETS: dict[str, tuple[Condition, ...]] = {
    "clean": (
        Condition("no_malformed_calls", "malformed_calls = 0"),
        Condition("no_undeclared_tools", "unknown_tool_calls = 0"),
        Condition("no_missing_arguments", "missing_arguments = 0"),
        Condition("every_call_answered", "calls_without_response = 0"),
        Condition("ends_with_answer", "ends_with_answer"),
    ),
}
PRESETS["recovered"] = PRESETS["clean"] + (Condition("no_unrecovered_failures", "unrecovered_failures = 0"),)
PRESETS["strict"] = PRESETS["clean"] + (
    Condition("no_failed_responses", "failed_responses = 0"),
    Condition("no_unknown_arguments", "unknown_arguments = 0"),
    Condition("no_unpaired_responses", "responses_without_call = 0"),
    Condition("no_malformed_responses", "malformed_responses = 0"),
    Condition("no_empty_think", "empty_think_blocks = 0"),
)
PRESETS["agentic"] = PRESETS["clean"] + (Condition("calls_a_tool", "tool_calls > 0"),)
PRESETS["reasoning"] = (
    Condition("has_reasoning", "think_blocks > 0"),
    Condition("no_empty_think", "empty_think_blocks = 0"),
)


class ConditionError(ValueError):
    """A --where / --preset the engine cannot use: says what is wrong and lists the columns."""


def conditions_of(where: str | None, preset: str | None) -> tuple[Condition, ...]:
    conds: tuple[Condition, ...] = ()
    if preset:
        if preset not in PRESETS:
            raise ConditionError(f"no preset {preset!r}; presets: {', '.join(PRESETS)}")
        conds = PRESETS[preset]
    if where and where.strip():
        conds += (Condition("where", where),)
    return conds


class ConditionEngine:
    """Conditions compiled against the feature schema by DuckDB, then evaluated per Arrow batch."""

    def __init__(self, conditions: Sequence[Condition], schema: pa.Schema):
        import duckdb

        self.conditions = tuple(conditions)
        self.schema = schema
        self._con = duckdb.connect()
        # NULL (e.g. a comparison with a NULL feature) does not keep a row.
        cols = ", ".join(f"coalesce(({c.sql}), false) AS c{i}" for i, c in enumerate(self.conditions))
        self._query = f"SELECT {cols} FROM batch" if self.conditions else ""
        for c in self.conditions:
            self._check(c)

    def _check(self, c: Condition) -> None:
        import duckdb

        batch = self.schema.empty_table()  # noqa: F841  (DuckDB reads the local by name)
        try:
            kind = self._con.execute(f"DESCRIBE SELECT ({c.sql}) AS v FROM batch").fetchall()[0][1]
        except duckdb.Error as e:
            msg = str(e).split("\n\nLINE")[0].strip()
            if any(f'"{name}" not found' in msg for name, _, _ in TOKEN_FEATURES):
                msg += "\n(tokens, trained_tokens and system_prompt_tokens: `filter` and `features` with --tokenizer)"
            raise ConditionError(f"{_label(c)}: {msg}\n{self.columns_text()}") from None
        if kind != "BOOLEAN":
            raise ConditionError(f"{_label(c)}: is a {kind}, not a true/false condition\n{self.columns_text()}")

    def columns_text(self) -> str:
        return "valid columns: " + ", ".join(f"{f.name} ({_sql_type(f.type)})" for f in self.schema)

    def evaluate(self, batch: pa.Table) -> np.ndarray:
        """bool[rows, conditions]: whether each row meets each condition."""
        if not self.conditions:
            return np.ones((batch.num_rows, 0), dtype=bool)
        res = self._con.sql(self._query).to_arrow_table()
        return np.column_stack([res.column(i).to_numpy(zero_copy_only=False) for i in range(len(self.conditions))]).astype(bool)

    def judge(self, batch: pa.Table, acct: Accounting) -> list[str | None]:
        """Per row: the first condition it fails, or None; each condition's failures counted in
        `acct.failing` (a row may fail several)."""
        met = self.evaluate(batch)
        names = [c.name for c in self.conditions]
        for j, name in enumerate(names):
            acct.failing[name] += int((~met[:, j]).sum())
        return [names[f[0]] if (f := np.flatnonzero(~row)).size else None for row in met]


def _label(c: Condition) -> str:
    return f"--where {c.sql!r}" if c.name == "where" else f"condition {c.name} ({c.sql})"


def _sql_type(t: pa.DataType) -> str:
    return {pa.int64(): "integer", pa.bool_(): "boolean", pa.string(): "text"}.get(t, str(t))
