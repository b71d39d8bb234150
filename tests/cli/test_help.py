"""`vrm --help`, `--version` and each command's help: defaults shown, options grouped, choices checked."""

import os
import subprocess
import sys

import pytest

from vrm.cli.main import main


def run_vrm(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def test_version_and_bench_help(capsys):
    from vrm import __version__

    for argv in (["--version"], ["bench", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"vrm {__version__}\n") and "bon" in out


@pytest.mark.slow
def test_top_level_help_does_not_import_torch():
    result = run_vrm("-X", "importtime", "-m", "vrm", "--help")
    assert result.returncode == 0 and all(command in result.stdout for command in ("train", "eval", "serve"))
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "torch" not in imported and "transformers" not in imported


@pytest.mark.parametrize("command", [["eval"], ["score"], ["serve"], ["bench", "bon"]])
def test_help_shows_defaults(command, capsys):
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--help"])
    assert stopped.value.code == 0 and "(default:" in capsys.readouterr().out


def test_train_help_groups_vrm_options_first_and_checks_choices(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    text = text[text.index("\noptions:") :]  # past the usage line
    order = [text.index(f"\n{title}:") for title in ("model", "data", "training")]
    assert order == sorted(order)
    assert "--accelerate_config" in text and "{bt,ib,moe,vrm,vrm-paper}" in text
    assert order[0] < text.index("--head_type") < order[1] < order[2] < text.index("--beta_w")
    for flag, value in [("--head_type", "nope"), ("--attribute_target", "x"), ("--truncation", "cut")]:
        with pytest.raises(SystemExit):  # refused while parsing: no data read, no model loaded
            main(
                [
                    "train",
                    "--model_name_or_path",
                    "/nonexistent",
                    "--dataset_name",
                    "/nonexistent",
                    flag,
                    value,
                ]
            )
        assert "invalid choice" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: /nonexistent\nhead_type: nope\n")
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config)])
    assert "head_type 'nope' is not one of" in capsys.readouterr().err


def test_generated_train_help_is_the_parsers_help():
    """`vrm train --help` prints `vrm.cli.train_help.TEXT` (no transformers import); it must be what the real
    parser prints. On failure: `python -c "from vrm.cli.train import write_help_module; write_help_module()"`."""
    from vrm.cli.train import help_text
    from vrm.cli.train_help import TEXT

    assert TEXT == help_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", ["train", "eval", "calibrate", "score", "serve", "bench", "synth", "recipe"]
)
def test_command_help_imports_neither_torch_nor_transformers(command):
    result = run_vrm("-X", "importtime", "-m", "vrm", command, "--help")
    assert result.returncode == 0 and "usage: vrm" in result.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "torch" not in imported and "transformers" not in imported
