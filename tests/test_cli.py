"""The run command as a RecBole user types it: argparse flags, -m/-d, --version,
``python -m recbole_diffusion``, names checked before torch is imported, and
--epochs bounding a whole ADRec run."""

import subprocess
import sys
from pathlib import Path

import pytest

from recbole_diffusion import cli
from recbole_diffusion.cli import UsageError, parse_args
from recbole_diffusion.config import build_config
from recbole_diffusion.precheck import (
    check_command_line,
    known_model_names,
    known_parameter_names,
)
from recbole_diffusion.registry import available_models
from recbole_diffusion.utils import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "SASRec", "--dataset", "ml-100k"],
        ["--model=SASRec", "--dataset=ml-100k"],
        ["-m", "SASRec", "-d", "ml-100k"],
    ],
)
def test_recbole_flag_spellings_give_the_same_run(argv):
    """Catches '--model X' or '-m X' refused, as the hand-written parser did."""
    flags, params = parse_args(argv + ["--epochs=3"])
    assert flags == {"model": "SASRec", "dataset": "ml-100k"}
    assert params == {"epochs": "3"}


def test_group_offset_config_files_and_switches():
    """Catches RecBole's --group_offset spelling, a space-separated
    --config_files or a bare switch read wrongly."""
    flags, _ = parse_args(
        ["--nproc", "2", "--group_offset=4", "--config_files", "a.yaml b.yaml"]
    )
    assert flags == {"nproc": 2, "offset": 4, "config_files": ["a.yaml", "b.yaml"]}
    flags, params = parse_args(["--tune", "--max_evals=3", "--topk=[5,10]"])
    assert flags == {"tune": True, "max_evals": 3}
    assert params == {"topk": "[5,10]"}  # RecBole's metric cut-offs
    flags, _ = parse_args(
        ["--recommend", "--model_file=x.pth", "--user_ids=1", "--topk=5"]
    )
    assert flags["topk"] == 5  # the recommendation count


def test_a_parameter_is_not_taken_for_an_abbreviated_flag():
    """Catches argparse's prefix matching: --output=x read as --output_file."""
    flags, params = parse_args(["--output=x"])
    assert flags == {} and params == {"output": "x"}


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--nproc=0"], "--nproc: must be >= 1, got 0"),
        (["--nproc=two"], "--nproc: 'two' is not an integer"),
        (["--tune", "--max_evals=0"], "--max_evals: must be >= 1"),
        (["--epochs", "5"], "cannot read '--epochs'"),
        (["-m", "SASRec", "--model=GRU4Rec"], "--model is given twice"),
        (["--epochs=1", "--epochs=2"], "--epochs is given twice"),
        (["--tune=maybe"], "--tune: takes no value"),
    ],
)
def test_malformed_command_lines_are_usage_errors(argv, reason):
    """Catches argparse printing its usage and exiting (several lines), or a
    repeated flag silently keeping the last value."""
    with pytest.raises(UsageError, match=reason.replace("[", r"\[")):
        parse_args(argv)


def test_version_and_help_name_the_program(monkeypatch, capsys):
    """Catches a --help that names another program, or a missing --version."""
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/recbole-diffusion"])
    assert cli.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: recbole-diffusion ")
    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("recbole-diffusion 0.") and "recbole 1.2.1" in out


def test_python_dash_m_runs_the_command_without_importing_torch(tmp_path):
    """Catches a missing __main__.py, and torch or RecBole imported before an
    unknown model or parameter is refused (the refusal then takes 15-25 s)."""
    version = subprocess.run(
        [sys.executable, "-m", "recbole_diffusion", "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert version.returncode == 0 and "recbole-diffusion" in version.stdout
    probe = (
        "import sys\n"
        "from recbole_diffusion.cli import main\n"
        "codes = [main(['-m', 'SASRek']), main(['--learnin_rate=0.1']),"
        " main(['--nproc=0'])]\n"
        "print(codes, 'torch' in sys.modules, 'recbole' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path
    )
    assert run.stdout.strip() == "[2, 2, 2] False False", run.stderr
    errors = run.stderr.strip().splitlines()
    assert len(errors) == 3 and "Traceback" not in run.stderr
    assert "Did you mean 'SASRec'?" in errors[0]
    assert "Did you mean 'learning_rate'?" in errors[1]
    assert list(tmp_path.iterdir()) == []


def test_unknown_parameter_refused_unless_a_user_file_defines_it(tmp_path):
    """Catches a misspelt key that runs anyway with the default value (a
    warning only), and a user's own key refused although their yaml has it."""
    with pytest.raises(ConfigError, match="Did you mean 'learning_rate'"):
        check_command_line({"model": "SASRec"}, {"learnin_rate": "0.01"})
    mine = tmp_path / "mine.yaml"
    mine.write_text("my_flag: 1\n", encoding="utf-8")
    check_command_line(
        {"model": "SASRec", "config_files": [str(mine)]}, {"my_flag": "2"}
    )
    with pytest.raises(ConfigError, match="--my_flag"):
        check_command_line({"model": "SASRec"}, {"my_flag": "2"})
    # A key of another model is known (it may be meant for a variant's file).
    check_command_line({"model": "SASRec"}, {"lambda_scale": "0.1"})


def test_the_light_lists_cover_every_model_and_every_configuration_key(tiny_config):
    """Catches a model the full lookup accepts but the early check refuses,
    and a configuration key (RecBole's or the plugin's) refused as unknown."""
    assert set(available_models()) <= known_model_names()
    known = known_parameter_names()
    for model in ("SASRec", "ADRec", "DiffuRecSys-V1", "DuoRec", "SASRec+"):
        config = build_config(model, "tiny", config_dict=dict(tiny_config))
        assert set(config.final_config_dict) <= known, model


def test_every_variant_is_in_the_help_and_the_readme():
    """Catches a variant (props/<Model>-<Variant>.yaml) that --help or the
    README leaves out."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    variants = [p.stem for p in (ROOT / "props").glob("*-*.yaml")]
    assert "DiffuRecSys-V2" in variants
    for name in variants:
        assert name in cli.USAGE, name
        assert name in readme, name


def test_epochs_caps_every_adrec_stage_unless_a_stage_key_is_given(tiny_config):
    """Catches --epochs=1 bounding only ADRec's stage 3 (110 epochs trained)."""
    settings = {k: v for k, v in tiny_config.items() if k != "epochs"}
    config = build_config(
        "ADRec", "tiny", config_dict=settings, cmd_args={"epochs": "3"}
    )
    assert (config["pretrain_epochs"], config["warmup_epochs"], config["epochs"]) == (
        3,
        3,
        3,
    )
    config = build_config(
        "ADRec",
        "tiny",
        config_dict=settings,
        cmd_args={"epochs": "3", "pretrain_epochs": "7", "warmup_epochs": "0"},
    )
    assert (config["pretrain_epochs"], config["warmup_epochs"]) == (7, 0)
    # Without --epochs the property files' schedule stands.
    config = build_config("ADRec", "tiny", config_dict=settings)
    assert (config["pretrain_epochs"], config["warmup_epochs"]) == (200, 5)


def test_command_line_values_are_read_as_literals_never_run(tiny_config, tmp_path):
    """Catches RecBole's eval() of --key=value, which runs any expression."""
    marker = tmp_path / "ran"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    with pytest.raises(ConfigError, match="learning_rate"):
        build_config(
            "SASRec",
            "tiny",
            config_dict=dict(tiny_config),
            cmd_args={"learning_rate": payload},
        )
    assert not marker.exists()
    config = build_config(
        "SASRec",
        "tiny",
        config_dict=dict(tiny_config),
        cmd_args={"topk": "[5, 10]", "loss_type": "CE", "reproducibility": "false"},
    )
    assert config["topk"] == [5, 10] and config["loss_type"] == "CE"
    assert config["reproducibility"] is False
