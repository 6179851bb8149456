"""Hyperparameter search: the run command's --tune, search-space files, Ray."""

import importlib.util
import math

import pytest

from recbole_diffusion import cli
from recbole_diffusion.config import build_config, props_dir
from recbole_diffusion.registry import UnknownModelError
from recbole_diffusion.tuning import (
    check_parameters,
    coerce_value,
    read_params_file,
)
from recbole_diffusion.utils import ConfigError


def _args(settings):
    return [f"--{key}={value}" for key, value in settings.items()]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_exhaustive_tuning_runs_every_point_and_writes_summary(
    tiny_config, tmp_path, capsys
):
    params_file = _write(tmp_path / "space.hyper", "learning_rate choice [1e-3,5e-4]\n")
    output = tmp_path / "out" / "sasrec.result"
    status = cli.main(
        [
            "--tune",
            "--model=SASRec",
            "--dataset=tiny",
            f"--params_file={params_file}",
            "--algo=exhaustive",
            f"--output_file={output}",
        ]
        + _args(tiny_config)
    )
    printed = capsys.readouterr().out
    assert status == 0
    assert "trials: 2 (2 finished)" in printed
    assert "best params: {'learning_rate':" in printed
    results = output.read_text()
    assert results.count("Valid result:") == 2
    assert results.count("Test result:") == 2
    summary = (tmp_path / "out" / "sasrec.result.md").read_text()
    assert "# Hyperparameter search: SASRec on tiny" in summary
    assert "| learning_rate | choice | 0.001, 0.0005 |" in summary
    trial_rows = [line for line in summary.splitlines() if line.startswith("| 1")]
    trial_rows += [line for line in summary.splitlines() if line.startswith("| 2")]
    assert len(trial_rows) == 2
    assert sum("(best)" in row for row in trial_rows) == 1
    assert "`epochs=1`" in summary  # the fixed settings are recorded


@pytest.mark.parametrize(
    "content, message",
    [
        ("learning_rat choice [1e-3]\n", "Did you mean 'learning_rate'"),
        ("learning_rate choice\n", "expected 'name type values'"),
        ("learning_rate choice []\n", "the range is empty"),
        ("learning_rate uniform 0.01,0.001\n", "the range 0.01 to 0.001 is empty"),
        ("learning_rate normal 0,1\n", "unknown type 'normal'"),
        ("learning_rate choice [1e-3,\n", "not a list of literal values"),
        ("n_layers choice [2]\nn_layers choice [3]\n", "already set on line 1"),
        (
            "hidden_dropout_prob choice [0.1,1.5]\n",
            "hidden_dropout_prob=1.5 is refused",
        ),
        ("# nothing but a comment\n", "holds no parameter"),
    ],
)
def test_bad_params_file_is_refused_before_training(
    tiny_config, tmp_path, capsys, content, message
):
    params_file = _write(tmp_path / "bad.hyper", content)
    status = cli.main(
        ["--tune", "--model=DuoRec", "--dataset=tiny", f"--params_file={params_file}"]
        + _args(tiny_config)
    )
    captured = capsys.readouterr()
    assert status == 2
    assert message in captured.err
    assert "running parameters" not in captured.out  # no trial started
    assert not list(tmp_path.glob("*.result*"))


def test_tuning_options_are_checked(tiny_config, tmp_path, capsys):
    params_file = _write(tmp_path / "space.hyper", "tau uniform 0.1,1.0\n")
    base = [
        "--tune",
        "--model=DuoRec",
        "--dataset=tiny",
        f"--params_file={params_file}",
    ]
    base += _args(tiny_config)
    assert cli.main(base + ["--algo=grid"]) == 2
    assert "--algo=grid is invalid" in capsys.readouterr().err
    # exhaustive search cannot enumerate a continuous range
    assert cli.main(base) == 2
    assert "cannot enumerate the continuous range of 'tau'" in capsys.readouterr().err
    assert cli.main(["--model=DuoRec", f"--params_file={params_file}"]) == 2
    assert "--params_file is only used with --tune" in capsys.readouterr().err


def test_params_file_types_and_grid(tmp_path):
    path = _write(
        tmp_path / "space.hyper",
        "\n".join(
            [
                "# comment lines and blank lines are skipped",
                "",
                "learning_rate choice [1e-3, 5e-4]",
                "sim choice ['dot','cos']",
                "tau uniform 0.1,1.0",
                "diffusion_steps quniform 8,32,8",
                "weight_decay loguniform -9,-4",
            ]
        ),
    )
    params = {p.name: p for p in read_params_file(path)}
    assert params["learning_rate"].values == (1e-3, 5e-4)
    assert params["sim"].grid() == ["dot", "cos"]
    assert params["tau"].grid() is None
    assert params["diffusion_steps"].grid() == [8, 16, 24, 32]
    assert params["weight_decay"].values == (-9.0, -4.0)
    assert f"{math.exp(-9):.3g}" in params["weight_decay"].describe()
    # hyperopt samples floats: integer parameters get integers back
    assert coerce_value(2, 16.0) == 16 and isinstance(coerce_value(2, 16.0), int)
    assert coerce_value(0.1, 16.0) == 16.0


def test_shipped_search_spaces_name_real_parameters(tiny_data_path):
    files = sorted((props_dir() / "hyper").glob("*.hyper"))
    assert {f.stem for f in files} >= {"DuoRec", "SASRec", "GRU4Rec", "BERT4Rec"}
    checked = []
    for path in files:
        build_args = {
            "model": path.stem,
            "dataset": "tiny",
            "config_dict": {"data_path": tiny_data_path},
        }
        try:
            config = build_config(**build_args)
        except UnknownModelError:  # a model that is not in the plugin yet
            continue
        params = read_params_file(path)
        check_parameters(params, config, build_args)
        checked.append(path.stem)
    assert "DuoRec" in checked and "SASRec" in checked


def test_unknown_parameter_lists_closest_name(tiny_data_path, tmp_path):
    build_args = {
        "model": "DuoRec",
        "dataset": "tiny",
        "config_dict": {"data_path": tiny_data_path},
    }
    config = build_config(**build_args)
    params = read_params_file(_write(tmp_path / "s.hyper", "lmd_semm choice [0.1]\n"))
    with pytest.raises(ConfigError, match="'lmd_semm' is not a parameter of DuoRec"):
        check_parameters(params, config, build_args)


def test_plain_recbole_hypertuning_uses_the_plugin_objective(tiny_config, tmp_path):
    """The run_hyper.py pattern of RecBole's docs, with the plugin's objective."""
    import yaml
    from recbole.trainer import HyperTuning

    from recbole_diffusion.quick_start import objective_function

    fixed = dict(tiny_config, model="DuoRec", dataset="tiny")
    fixed_file = tmp_path / "fixed.yaml"
    fixed_file.write_text(yaml.safe_dump(fixed), encoding="utf-8")
    space_file = _write(tmp_path / "space.hyper", "lmd_sem choice [0.2]\n")
    tuner = HyperTuning(
        objective_function,
        algo="exhaustive",
        params_file=space_file,
        fixed_config_file_list=[str(fixed_file)],
    )
    tuner.run()
    assert tuner.best_params == {"lmd_sem": 0.2}
    result = tuner.params2result[tuner.params2str(tuner.best_params)]
    assert result["model"] == "DuoRec"
    assert "ndcg@10" in result["test_result"]
    tuner.export_result(output_file=str(tmp_path / "hyper.result"))
    assert "Test result" in (tmp_path / "hyper.result").read_text()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed")
def test_ray_tool_runs_two_trials(tiny_config, tmp_path, capsys):
    params_file = _write(tmp_path / "space.hyper", "lmd_sem choice [0.1,0.2]\n")
    output = tmp_path / "ray.result"
    status = cli.main(
        [
            "--tune",
            "--tool=ray",
            "--ray_cpus=2",
            "--model=DuoRec",
            "--dataset=tiny",
            f"--params_file={params_file}",
            f"--output_file={output}",
        ]
        + _args(tiny_config)
    )
    printed = capsys.readouterr().out
    assert status == 0, printed[-2000:]
    assert "trials: 2 (2 finished)" in printed
    summary = (tmp_path / "ray.result.md").read_text()
    assert "exhaustive with ray, 2 trials" in summary
