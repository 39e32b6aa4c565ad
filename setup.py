"""Compiles the parser (parse.py and the records it builds, turns.py) to C with mypyc.

The same modules run as plain Python wherever they are not compiled: where mypyc or a C
compiler is missing, with STREAMPROC_PURE_PYTHON=1 at install time, or at run time when the
build is older than the source (see streamproc/_compiled.py). Everything else is in
pyproject.toml.
"""

import os

from setuptools import setup

COMPILED = ["streamproc/turns.py", "streamproc/parse.py"]


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
    return exts


setup(ext_modules=ext_modules())
