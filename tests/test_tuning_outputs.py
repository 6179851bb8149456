"""Tuning leaves its results as files in log/tuning/: JSON, CSV, and RecBole's display_file."""

import csv
import json

from recbole_diffusion import cli
from recbole_diffusion.trainer import load_checkpoint


def _args(settings):
    return [f"--{key}={value}" for key, value in settings.items()]


def test_tuning_writes_json_csv_and_figure_into_log(tiny_config, tmp_path, monkeypatch):
    """Catches results dropped in the working directory, or files that disagree."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    space = tmp_path / "space.hyper"
    space.write_text("learning_rate choice [1e-3,5e-4]\n", encoding="utf-8")
    status = cli.main(
        [
            "--tune",
            "--model=SASRec",
            "--dataset=tiny",
            f"--params_file={space}",
            "--display_file=tuning.html",
        ]
        + _args(tiny_config)
    )
    assert status == 0
    # RecBole's own output folders (git-ignored) and the figure asked for, no more.
    left = {p.name for p in workdir.iterdir()}
    assert left - {"log_tensorboard"} == {"log", "tuning.html"}
    stem = workdir / "log" / "tuning" / "hyper_SASRec_tiny.result"
    for suffix in ("", ".json", ".csv", ".md"):
        assert stem.with_name(stem.name + suffix).is_file(), suffix
    record = json.loads(stem.with_name(stem.name + ".json").read_text())
    trials = record["trials"]
    # hyperopt's exhaustive search visits the grid in its own order.
    assert sorted(t["params"]["learning_rate"] for t in trials) == [0.0005, 0.001]
    assert [t["trial"] for t in trials] == [1, 2]
    assert sum(t["best"] for t in trials) == 1
    best = next(t for t in trials if t["best"])
    assert record["best_params"] == best["params"]
    assert best["valid_score"] == max(t["valid_score"] for t in trials)
    for trial in trials:
        assert trial["valid"]["ndcg@10"] == trial["valid_score"]
        assert set(trial["test"]) >= {"ndcg@10", "hit@10"}
        checkpoint = load_checkpoint(trial["model_file"])
        lr = checkpoint["config"]["external"]["learning_rate"]
        assert lr == trial["params"]["learning_rate"]  # each trial's own checkpoint
    with open(stem.with_name(stem.name + ".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["learning_rate"]) for r in rows] == [
        t["params"]["learning_rate"] for t in trials
    ]
    assert [float(r["test_ndcg@10"]) for r in rows] == [
        t["test"]["ndcg@10"] for t in trials
    ]
    assert [r["model_file"] for r in rows] == [t["model_file"] for t in trials]
    page = (workdir / "tuning.html").read_text()
    assert "<svg" in page and page.count("<li>trial") == 2


def test_display_file_of_unknown_format_is_refused_before_any_trial(
    tiny_config, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    status = cli.main(
        ["--tune", "--model=SASRec", "--dataset=tiny", "--display_file=plot.txt"]
        + _args(tiny_config)
    )
    assert status == 2
    assert "--display_file=plot.txt is invalid" in capsys.readouterr().err
    assert not (tmp_path / "log").exists()
