"""Which parser runs: the mypyc build of parse.py and turns.py, or their Python source.

setup.py compiles both where it can; the build sits beside the source (in the package directory
of an editable install too), and Python imports a build before a source of the same name. A
build older than its source would run stale code, so then, and whenever STREAMPROC_PURE_PYTHON=1,
both are imported from source. It must run before either module is imported:
streamproc/__init__.py calls it first.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import warnings
from pathlib import Path

MODULES = ("streamproc.turns", "streamproc.parse")
_HERE = Path(__file__).parent


def _source(name: str) -> Path:
    return _HERE / (name.rpartition(".")[2] + ".py")


def _build(name: str) -> Path | None:
    stem = name.rpartition(".")[2]
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (p := _HERE / (stem + suffix)).exists():
            return p
    return None


class _FromSource:
    """A meta path finder that imports MODULES from their .py files, past any build."""

    @staticmethod
    def find_spec(fullname: str, path=None, target=None):
        return importlib.util.spec_from_file_location(fullname, _source(fullname)) if fullname in MODULES else None


def choose() -> None:
    builds = {m: b for m in MODULES if (b := _build(m)) is not None}
    if not builds:
        return
    stale = [m for m, b in builds.items() if _source(m).stat().st_mtime > b.stat().st_mtime]
    if stale:
        warnings.warn(
            f"streamproc: the compiled {', '.join(stale)} is older than its source, so the source runs "
            "(slower); rebuild with: pip install -e .",
            stacklevel=3,
        )
    if stale or os.environ.get("STREAMPROC_PURE_PYTHON") == "1":
        sys.meta_path.insert(0, _FromSource)


def parser_build() -> str:
    """"mypyc" when the imported parser is the compiled one, else "python"."""
    from . import parse

    return "python" if parse.__file__.endswith(".py") else "mypyc"
