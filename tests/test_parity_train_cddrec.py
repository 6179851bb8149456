"""The CDDRec recipe of the training-parity check, without training anything.

Tests that read the reference code need its checkout: ``$PARITY_REFERENCE_ROOT/
CDDRec`` (default ``/tmp/refs/CDDRec``); they are skipped when it is absent.
"""

import math
import os
import types
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.parity import train_cddrec as recipe
from benchmarks.parity.build import build_model
from recbole_diffusion.config import props_dir

torch.set_num_threads(1)

CHECKOUT = Path(os.environ.get("PARITY_REFERENCE_ROOT", "/tmp/refs")) / "CDDRec"


def _needs_checkout():
    if not (CHECKOUT / "trainers.py").is_file():
        pytest.skip(f"no CDDRec checkout at {CHECKOUT}")


def _fake_reference(root):
    data = root / "data"
    data.mkdir(parents=True)
    # user ids, then items oldest first (ids need not be contiguous)
    (data / "Beauty.txt").write_text(
        "1 5 3 7 2\n2 4 1 6\n3 2 2 9 8 1\n", encoding="utf-8"
    )
    return root


def test_load_data_splits_the_reference_file(tmp_path):
    data = recipe.load_data("CDDRec", _fake_reference(tmp_path / "ref"))
    assert data.name == "parity-cddrec-beauty"
    assert data.train == [[5, 3], [4], [2, 2, 9]]
    assert data.valid == [7, 1, 8]
    assert data.test == [2, 6, 1]
    assert data.n_items == 10  # ids 1 .. 9, 0 pads
    assert data.n_users == 3
    assert data.n_interactions == 4 + 3 + 5
    assert data.source == str(Path("data", "Beauty.txt"))
    # the reference's training row: inputs items[:-3], targets items[1:-2]
    assert list(data.sequences())[2] == [2, 2, 9, 8, 1]


def test_load_data_refuses_other_models_and_short_users(tmp_path):
    with pytest.raises(ValueError):
        recipe.load_data("ADRec", _fake_reference(tmp_path / "a"))
    root = tmp_path / "b" / "data"
    root.mkdir(parents=True)
    (root / "Beauty.txt").write_text("1 5 3 7\n2 4 1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="fewer than 3"):
        recipe.load_data("CDDRec", tmp_path / "b")


def test_full_sort_metrics_names_the_reference_list():
    scores = [round(0.01 * i, 2) for i in range(13)]
    metrics = recipe.full_sort_metrics(scores)
    assert metrics["hit@1"] == 0.0 and metrics["ndcg@1"] == 0.01
    assert metrics["hit@10"] == 0.04 and metrics["ndcg@10"] == 0.05
    assert metrics["hit@20"] == 0.08 and metrics["ndcg@20"] == 0.09
    assert metrics["mrr"] == 0.12
    with pytest.raises(ValueError):
        recipe.full_sort_metrics(scores[:7])  # the sampled-metrics list


def test_full_sort_metrics_of_the_reference_scorer(tmp_path, monkeypatch):
    """Ranks 1 and 3 through the reference's own scorer: NDCG@10 (1 + 1/log2 4) / 2."""
    _needs_checkout()
    import numpy as np

    from benchmarks.parity.reference import import_reference

    monkeypatch.setattr(np, "float", float, raising=False)  # as the child does
    trainers = import_reference("CDDRec", CHECKOUT, ["utils", "trainers"])["trainers"]
    owner = types.SimpleNamespace(
        args=types.SimpleNamespace(log_file=str(tmp_path / "log"))
    )
    answers = np.array([[7], [5]])
    predicted = np.array([[7] + list(range(10, 49)), [8, 9, 5] + list(range(10, 47))])
    scores, _, _ = trainers.Trainer.get_full_sort_score(owner, 0, answers, predicted)
    metrics = recipe.full_sort_metrics(scores)
    third = 1 / math.log2(4)
    assert metrics["ndcg@10"] == pytest.approx((1 + third) / 2)
    assert metrics["ndcg@5"] == pytest.approx((1 + third) / 2)
    assert metrics["hit@10"] == pytest.approx(1.0)
    assert metrics["hit@1"] == pytest.approx(0.5)
    assert metrics["ndcg@1"] == pytest.approx(0.5)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 3) / 2)


def test_selected_epoch_follows_its_early_stopping_rule():
    valid = [
        [0, 0.10, 0.050],  # first: kept
        [1, 0.09, 0.060],  # NDCG@10 up: kept although HR@10 fell
        [2, 0.09, 0.055],  # neither beats epoch 1's values
        [3, 0.20, 0.010],  # HR@10 up: kept
        [4, 0.15, 0.050],  # NDCG@10 beats epoch 3's 0.010: kept
    ]
    assert recipe.selected_epoch(valid) == 4
    assert recipe.selected_epoch(valid[:3]) == 1
    assert recipe.selected_epoch([]) is None


def _raw(best_epoch):
    def scores(ndcg10, hit10):
        values = [0.0] * 13
        values[4], values[5] = hit10, ndcg10
        return values

    return {
        "valid": [[0, scores(0.01, 0.02)], [1, scores(0.03, 0.05)]],
        "best_epoch": best_epoch,
        "best_valid": scores(0.031, 0.05),
        "test": scores(0.025, 0.04),
        "train_seconds": 12.345,
        "wall_seconds": 20.0,
        "options": {"mask_history": True},
    }


def test_summarise_gives_the_record():
    result = recipe.summarise(_raw(1))
    assert result["valid_curve"] == [[0, 0.01], [1, 0.03]]
    assert result["test"]["ndcg@10"] == 0.025 and result["test"]["hit@10"] == 0.04
    assert set(result["test"]) == {
        "ndcg@5",
        "hit@5",
        "ndcg@10",
        "hit@10",
        "ndcg@20",
        "hit@20",
    }
    assert result["epochs_trained"] == 2 and result["best_epoch"] == 1
    assert result["train_seconds"] == 12.35
    with pytest.raises(RuntimeError, match="kept epoch 0"):
        recipe.summarise(_raw(0))


def _props_keys():
    keys = set()
    for name in ("CDDRec.yaml", "overall.yaml"):
        with open(Path(props_dir()) / name, encoding="utf-8") as handle:
            keys |= set(yaml.safe_load(handle))
    return keys


def test_our_overrides_are_known_keys_and_build_our_model():
    settings = recipe.SETTINGS["CDDRec"]
    overrides = recipe.our_overrides("CDDRec", settings)
    assert set(overrides) <= _props_keys(), set(overrides) - _props_keys()
    assert overrides["diffusion_steps"] == settings["T"]
    assert overrides["MAX_ITEM_LIST_LENGTH"] == settings["max_seq_length"] == 20
    assert overrides["train_batch_size"] == settings["batch_size"] == 32
    assert overrides["train_windows"] == "last"
    model = build_model("CDDRec", 50, **overrides)
    assert model.decoder.step_embedding.num_embeddings == settings["T"]
    assert model.item_embedding.embedding_dim == settings["hidden_size"]


def test_reference_args_and_protocol():
    settings = recipe.SETTINGS["CDDRec"]
    args = recipe.reference_args(settings, 7, "/scratch/x", linear_infonce=True)
    assert args["seed"] == 7 and args["no_cuda"] and args["data_augmentation"]
    assert args["linear_infonce"] is True
    assert args["data_dir"].startswith("/scratch/x") and args["data_name"] == "Beauty"
    assert args["T"] == settings["T"] and args["epochs"] == settings["epochs"]
    with pytest.raises(ValueError, match="fixed"):
        recipe.reference_args(dict(settings, cl_weight=0.1), 7, "/scratch/x")
    assert recipe.KEEP_LAST["CDDRec"] is None
    assert recipe.MODELS == ("CDDRec",)
    notes = " ".join(recipe.PROTOCOL["CDDRec"])
    for word in ("history masking", "linear_infonce", "model selection", "patches"):
        assert word in notes


def test_run_reference_never_writes_into_the_checkout(tmp_path):
    reference = _fake_reference(tmp_path / "ref")
    with pytest.raises(ValueError, match="inside the checkout"):
        recipe.run_reference(
            "CDDRec",
            reference,
            recipe.SETTINGS["CDDRec"],
            1,
            reference / "work",
            tmp_path / "log",
        )
    assert sorted(p.name for p in reference.iterdir()) == ["data"]


def test_first_batches_cuts_a_loader():
    cut = recipe._FirstBatches(list(range(10)), 3)
    assert list(cut) == [0, 1, 2] and len(cut) == 3
    assert len(recipe._FirstBatches([1, 2], 5)) == 2


def test_run_reference_passes_the_options_to_the_child(tmp_path, monkeypatch):
    specs = []

    def fake_child(module, spec, work_dir, log_path):
        specs.append(spec)
        return _raw(1)

    monkeypatch.setattr(recipe, "run_child", fake_child)
    reference = _fake_reference(tmp_path / "ref")
    settings = dict(recipe.SETTINGS["CDDRec"], mask_history=False)
    result = recipe.run_reference(
        "CDDRec", reference, settings, 5, tmp_path / "w", tmp_path / "l"
    )
    assert result["best_epoch"] == 1
    recipe.run_reference(
        "CDDRec",
        reference,
        settings,
        5,
        tmp_path / "w",
        tmp_path / "l",
        linear_infonce=True,
    )
    assert [s["mask_history"] for s in specs] == [False, False]
    assert [s["args"]["linear_infonce"] for s in specs] == [False, True]
    assert specs[0]["args"]["seed"] == 5
    # the data file is copied into the scratch folder, where the child reads it
    assert (
        specs[0]["args"]["data_dir"]
        == str((tmp_path / "w" / "data").resolve()) + os.sep
    )
    assert (
        (tmp_path / "w" / "data" / "Beauty.txt")
        .read_text(encoding="utf-8")
        .startswith("1 5")
    )
