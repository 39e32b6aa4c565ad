"""`streamproc train --config FILE`: every option from a TOML, YAML or JSON file, the command line
over it, and the resolved configuration written back so that reading it gives the same run."""

from __future__ import annotations

import pytest

from streamproc.cli import build_parser, main
from streamproc.cli.train import resolve
from streamproc.train.config import read_config, write_config
from streamproc.train.trainer import TrainConfig, TrainOptionError

TOML = """
shards = "packed"
model = "Qwen/Qwen2.5-7B-Instruct"
output = "runs/lora"
max_steps = 200
lr = 2e-4
lora = 16
lora_alpha = 32
lora_targets = ["q_proj", "v_proj"]
gradient_checkpointing = true
report_to = ["tensorboard"]
"""

YAML = """
shards: packed
model: Qwen/Qwen2.5-7B-Instruct
output: runs/lora
max-steps: 200          # dashes as on the command line
learning_rate: 0.0002
lora: 16
lora-alpha: 32
lora-targets: q_proj, v_proj
gradient-checkpointing: true
report_to: [tensorboard]
"""


def resolved(argv: list[str]) -> TrainConfig:
    return resolve(build_parser("train").parse_args(["train", *argv]))


@pytest.mark.parametrize("name, text", [("train.toml", TOML), ("train.yaml", YAML)])
def test_every_option_from_a_file_and_the_command_line_over_it(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    cfg = resolved(["--config", str(path)])
    assert cfg == TrainConfig(
        shards="packed", model="Qwen/Qwen2.5-7B-Instruct", output="runs/lora", max_steps=200, learning_rate=2e-4,
        lora=16, lora_alpha=32.0, lora_targets=["q_proj", "v_proj"], gradient_checkpointing=True, report_to=["tensorboard"],
    )  # fmt: skip
    over = resolved(["--config", str(path), "--lr", "1e-3", "--lora-targets", "o_proj", "--output", "elsewhere", "--merge"])
    assert (over.learning_rate, over.lora_targets, over.output, over.merge) == (1e-3, ["o_proj"], "elsewhere", True)
    assert (over.max_steps, over.lora, over.shards) == (200, 16, "packed")  # the file's, where nothing overrides


def test_without_a_file_the_defaults_apply():
    cfg = resolved(["--shards", "p", "--model", "m", "--output", "o"])
    assert cfg == TrainConfig(shards="p", model="m", output="o")


def test_the_written_configuration_reads_back_to_the_same(tmp_path):
    cfg = TrainConfig(
        shards="packed", model="m", output="o", eval_shards=None, max_steps=None, epochs=1.5, learning_rate=3e-4,
        resume="o/checkpoint-20", attn="sdpa", lora=8, lora_dropout=0.05, lora_targets=["q_proj"], merge=True,
    )  # fmt: skip
    path = tmp_path / "o" / "train_config.yaml"
    write_config(cfg, path)
    assert TrainConfig(**read_config(path)) == cfg
    assert resolved(["--config", str(path)]) == cfg
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically


@pytest.mark.parametrize(
    "name, text, said",
    [
        ("t.toml", 'max_step = 3\n', "t.toml: unknown option 'max_step'"),
        ("t.toml", 'max_steps = "3"\n', "t.toml: option 'max_steps' is '3'; it takes int | None"),
        ("t.yaml", "merge: 1\n", "t.yaml: option 'merge' is 1; it takes bool"),
        ("t.yaml", "lora: true\n", "t.yaml: option 'lora' is True; it takes int | None"),
        ("t.yaml", "lora_targets: [q_proj, 3]\n", "t.yaml: option 'lora_targets' is ['q_proj', 3]"),
        ("t.toml", "max_steps = \n", "t.toml: not valid TOML"),
        ("t.yaml", "- a\n- b\n", "t.yaml: a config file holds a table of options"),
        ("t.ini", "a=1\n", "t.ini: a config file ends in .toml, .yaml, .yml or .json"),
    ],
)
def test_a_bad_config_file_is_one_error_naming_file_and_key(tmp_path, name, text, said):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TrainOptionError) as e:
        read_config(path)
    assert str(e.value).startswith(f"{path.parent}/{said}")


def test_cli_reports_config_errors_and_missing_options_in_one_line(tmp_path, capsys):
    (tmp_path / "t.toml").write_text('model = "m"\nlr = 0.1\n')
    rc = main(["train", "--config", str(tmp_path / "t.toml"), "--output", str(tmp_path / "o")])
    assert rc == 2
    assert capsys.readouterr().err == "streamproc train: error: --shards is required, on the command line or in --config FILE\n"
    rc = main(["train", "--config", str(tmp_path / "missing.yaml")])
    assert rc == 2 and "missing.yaml: cannot read the config file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

