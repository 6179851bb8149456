"""A run leaves its result as a JSON file next to its log."""

import json
import os

import pytest

from recbole_diffusion.quick_start import run_recbole_diffusion
from recbole_diffusion.trainer import load_checkpoint


@pytest.mark.parametrize("model", ["SASRec", "ADRec"])
def test_run_writes_its_result_next_to_its_log(
    model, tiny_config, tmp_path, monkeypatch
):
    """Catches a result file that is missing, misplaced, or disagrees with the run."""
    monkeypatch.chdir(tmp_path)
    settings = dict(tiny_config, epochs=2)
    if model == "ADRec":
        settings.update(pretrain_epochs=1, warmup_epochs=1, n_heads=2)
    result = run_recbole_diffusion(model=model, dataset="tiny", config_dict=settings)
    path = result["result_file"]
    logs = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(tmp_path / "log")
        for name in names
        if name.endswith(".log")
    ]
    assert len(logs) == 1 and path == os.path.splitext(logs[0])[0] + ".json"
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    assert record["model"] == model and record["dataset"] == "tiny"
    assert record["test"] == pytest.approx(
        {k: float(v) for k, v in result["test_result"].items()}
    )
    assert record["valid"]["ndcg@10"] == pytest.approx(result["best_valid_score"])
    assert record["checkpoint"] == result["model_file"]
    assert record["best_epoch"] == load_checkpoint(result["model_file"])["epoch"]
    assert record["config"]["epochs"] == 2 and record["config"]["seed"] == 2020
    assert {"torch", "recbole", "recbole_diffusion"} <= set(record["versions"])
    assert record["wall_seconds"] > 0 and record["log_file"] == logs[0]
    if model == "ADRec":
        assert record["best_stage"] in (2, 3)
        assert set(record["stage_checkpoints"]) == {"1", "2", "3"}
