"""A progress bar for work counted in items (rows, sections), shown where the row bars are."""

from __future__ import annotations

import contextlib
from typing import Iterator

from streamproc.run.runner import progress_shown


@contextlib.contextmanager
def bar(desc: str, total: int, unit: str) -> Iterator:
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit=unit, disable=not progress_shown(), leave=False) as b:
        yield b
