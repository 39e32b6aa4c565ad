"""Summary tables keyed for code, labelled for people.

The terminal, Markdown and the web page find a table, a column or a row by its key and print its
label: renaming a label changes what is printed, never which rows are coloured or which filter a
row links to. (Apart from report.py, which draws plots, so the page's workers import no matplotlib.)
"""

from __future__ import annotations

from dataclasses import dataclass

FAILURE = "failure"  # a figure or column that counts failures: shown red where not zero
WARNING = "warning"  # something odd in the data: shown yellow where not zero
QUALITY = "quality"  # a data-quality check: a warning, and a row left out where zero everywhere


@dataclass(slots=True, frozen=True)
class Column:
    key: str
    label: str
    mark: str = ""  # FAILURE where the column counts failures


@dataclass(slots=True, frozen=True)
class TableRow:
    """A table row: `key` is what it stands for (a figure's key, a tool's name), `cells` what is
    printed, its label first."""

    key: str
    cells: list[str]
    mark: str = ""  # FAILURE, WARNING or QUALITY: how a value that is not zero is shown


@dataclass(slots=True, frozen=True)
class Table:
    """A summary table. Views find tables, columns and rows by key; labels are only printed."""

    key: str  # FIGURES_TABLE, TOOLS_TABLE, CLASSES_TABLE, CATEGORIES_TABLE, TRAINING_TABLE
    title: str
    columns: list[Column]  # the first holds the rows' labels
    rows: list[TableRow]

    @property
    def header(self) -> list[str]:
        return [c.label for c in self.columns]


FIGURES_TABLE, TOOLS_TABLE, CLASSES_TABLE, CATEGORIES_TABLE, TRAINING_TABLE = "figures", "tools", "classes", "categories", "training"
# Keys of the first column where a row names a value the trace list filters on.
TOOL, CLASS, CATEGORY = "tool", "class", "category"
