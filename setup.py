"""Compiles the parser (parse/parser.py, the records it builds, parse/turns.py, and the chat-layout
reader that builds them too, io/layouts.py) to C with mypyc.

The same modules run as plain Python wherever they are not compiled: where mypyc or a C
compiler is missing, with STREAMPROC_PURE_PYTHON=1 at install time, or at run time when their
source has changed since the build (see streamproc/_compiled.py). Everything else is in
pyproject.toml.
"""

import importlib.util
import json
import os
from pathlib import Path

from setuptools import setup

PACKAGE = Path(__file__).parent / "streamproc"
_spec = importlib.util.spec_from_file_location("_compiled", PACKAGE / "_compiled.py")
compiled = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compiled)
COMPILED = [str(compiled._source(m, PACKAGE).relative_to(PACKAGE.parent)) for m in compiled.MODULES]


def ext_modules():
    if os.environ.get("STREAMPROC_PURE_PYTHON") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("streamproc: mypyc is not installed; the parser runs as Python")
        return []
    try:
        exts = mypycify(
            ["--ignore-missing-imports", "--follow-imports=silent", *COMPILED], opt_level="3", group_name="streamproc.parser"
        )
    except SystemExit:  # mypyc prints what it could not compile (a type error) and exits
        print("streamproc: mypyc could not compile the parser (see above); it runs as Python")
        return []
    for ext in exts:
        ext.optional = True  # no C compiler: install anyway, as Python
    (PACKAGE / compiled.BUILT_FROM).write_text(json.dumps(compiled.source_hashes(PACKAGE), indent=1))
    return exts


setup(ext_modules=ext_modules())
