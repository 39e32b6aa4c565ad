"""Which parser runs: the mypyc build of parse/parser.py, parse/turns.py and io/layouts.py, or their Python source.

setup.py compiles them where it can and writes the sha256 of the sources it compiled to
BUILT_FROM. The build sits beside the source (in the package directory of an editable install
too), and Python imports a build before a source of the same name; a build whose sources have
changed since (an edited checkout) would run stale code, so then, and whenever
STREAMPROC_PURE_PYTHON=1, all are imported from source. Content, not file times, decides: an
installer writes files in any order. `choose` must run before any of them is imported:
streamproc/__init__.py calls it first. This module uses only the standard library, so setup.py
can load it before anything is installed.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

MODULES = ("streamproc.parse.turns", "streamproc.parse.parser", "streamproc.io.layouts")
"""The parser, the records it builds, and the chat-layout reader that builds the same records
(so the two layouts parse at the same speed, compiled or not)."""
BUILT_FROM = "_built_from.json"
_HERE = Path(__file__).parent


def _source(name: str, package_dir: Path = _HERE) -> Path:
    return package_dir.joinpath(*name.split(".")[1:]).with_suffix(".py")


def _is_built(name: str) -> bool:
    source = _source(name)
    return any(source.with_suffix(suffix).exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


class _FromSource:
    """A meta path finder that imports MODULES from their .py files, past any build."""

    @staticmethod
    def find_spec(fullname: str, path=None, target=None):
        return importlib.util.spec_from_file_location(fullname, _source(fullname)) if fullname in MODULES else None


def source_hashes(package_dir: Path = _HERE) -> dict[str, str]:
    """sha256 of each compiled module's source, by module name."""
    return {m: hashlib.sha256(_source(m, package_dir).read_bytes()).hexdigest() for m in MODULES}


def choose() -> None:
    if not any(_is_built(m) for m in MODULES):
        return
    if os.environ.get("STREAMPROC_PURE_PYTHON") == "1":
        sys.meta_path.insert(0, _FromSource)
        return
    try:
        built = json.loads((_HERE / BUILT_FROM).read_text())
    except (OSError, ValueError):
        built = {}
    try:
        changed = [m for m, h in source_hashes().items() if built.get(m) != h]
    except OSError:  # an install without the sources: the build is all there is
        return
    if changed:
        warnings.warn(
            f"streamproc: the source of {', '.join(changed)} changed since the build, so the source runs "
            "(slower); rebuild with: pip install -e .",
            stacklevel=3,
        )
        sys.meta_path.insert(0, _FromSource)


def parser_build() -> str:
    """"mypyc" when the imported parser is the compiled one, else "python"."""
    from streamproc.parse import parser

    return "python" if parser.__file__.endswith(".py") else "mypyc"
