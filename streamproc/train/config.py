"""`streamproc train --config FILE`: train options from a TOML, YAML or JSON file, and the resolved
configuration written back beside metrics.json, so a run can be repeated exactly.

Keys are TrainConfig's field names (`max_steps`, `lora_targets`) or the command-line option names
without their dashes (`max-steps`, `lr`); each value is checked against the field's type, and an
unknown key or a wrong type is an error naming the file and the key.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from streamproc.io.files import write_bytes
from streamproc.train.trainer import TrainConfig, TrainOptionError

CONFIG_FILE = "train_config.yaml"
"""The resolved configuration in the output directory; `--config OUTPUT/train_config.yaml` repeats the run."""

_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),), "list[str]": (list,)}


def read_config(path: str | os.PathLike, aliases: dict[str, str] | None = None) -> dict[str, Any]:
    """The TrainConfig fields a config file sets. `aliases` maps other names (the command-line
    options, as `lr`) to field names; `-` and `_` are the same in a key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise TrainOptionError(f"{path}: cannot read the config file: {e.strerror}") from None
    data = _parse(path, text)
    if not isinstance(data, dict):
        raise TrainOptionError(f"{path}: a config file holds a table of options (key = value), not a {type(data).__name__}")
    types = {f.name: f.type for f in fields(TrainConfig)}
    names = {**{k: k for k in types}, **(aliases or {})}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = names.get(str(key).replace("-", "_"))
        if name is None:
            raise TrainOptionError(f"{path}: unknown option {key!r}; the options are {', '.join(sorted(types))}")
        out[name] = _checked(path, key, value, types[name])
    return out


def write_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Every field of `cfg`, as YAML (atomically): what `read_config` reads back to the same config."""
    import yaml

    head = "# streamproc train: the resolved configuration of this run (streamproc train --config THIS_FILE repeats it)\n"
    write_bytes(path, (head + yaml.safe_dump(asdict(cfg), sort_keys=False)).encode("utf-8"))


def _parse(path: Path, text: str):
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            import tomllib  # Python 3.11+

            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
        if suffix == ".json":
            return json.loads(text)
    except ImportError:
        raise TrainOptionError(f"{path}: reading TOML needs Python 3.11 or later (tomllib); use YAML or JSON") from None
    except Exception as e:  # each parser has its own error class; all say where
        raise TrainOptionError(f"{path}: not valid {suffix[1:].upper()}: {e}") from None
    raise TrainOptionError(f"{path}: a config file ends in .toml, .yaml, .yml or .json")


def _checked(path: Path, key: str, value: Any, annotation: str) -> Any:
    """`value` if it has a type the field's annotation allows (an int where a float goes; a
    comma-separated string where a list of names goes), else TrainOptionError."""
    allowed = [t for part in annotation.split("|") for t in _TYPES.get(part.strip(), ())]
    if "list[str]" in annotation and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    ok = isinstance(value, tuple(allowed)) and not (isinstance(value, bool) and bool not in allowed)
    if ok and isinstance(value, list):
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        raise TrainOptionError(f"{path}: option {key!r} is {value!r}; it takes {annotation}")
    return float(value) if isinstance(value, int) and not isinstance(value, bool) and int not in allowed else value
