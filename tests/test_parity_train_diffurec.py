"""The DiffuRec / DiffuRecSys recipe of the training parity, without a checkout.

``load_data`` on tiny pickles, the per-epoch recording of a reference's
``model_train`` on hand-made scores (closed-form NDCG/HR), and the config keys
of ``our_overrides``. A real run of the reference needs its checkout (under
``PARITY_REFERENCE_ROOT``, e.g. ``/tmp/refs``) and minutes; it is not run here.
"""

import math
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from conftest import UnitDataset, unit_config

from benchmarks.parity import train_diffurec as recipe
from benchmarks.parity.training_data import write_atomic
from benchmarks.parity.training_metrics import MetricRecorder
from recbole_diffusion.config import props_dir

torch.set_num_threads(1)


def _write(path, raw):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(raw, handle)
    return path


def test_load_data_reads_the_adrec_layout(tmp_path):
    # ADRec's ml-100k: per-user lists, no smap; n_items = largest id + 1
    path = _write(
        tmp_path / "ml.pkl",
        {"train": [[1, 2, 3], [4, 5]], "val": [[6], [2]], "test": [[7], [1]]},
    )
    data = recipe.load_data("DiffuRec", tmp_path, data_file=path)
    assert data.name == "parity-diffurec-ml-100k"
    assert data.train == [[1, 2, 3], [4, 5]]
    assert data.valid == [6, 2]
    assert data.test == [7, 1]
    assert (data.n_users, data.n_items, data.n_interactions) == (2, 8, 9)


def test_load_data_reads_the_diffurecsys_layout(tmp_path):
    # per-user dicts, item_num = len(smap) even if the largest id is smaller
    raw = {
        "train": {1: [3, 1], 0: [1, 2, 3]},
        "val": {0: [4], 1: [2]},
        "test": {1: [4], 0: [5]},
        "umap": {1: 0, 2: 1},
        "smap": {i: i for i in range(1, 7)},
    }
    _write(tmp_path / "datasetB.pkl", raw)
    data = recipe.load_data("DiffuRecSys", tmp_path)
    assert data.train == [[1, 2, 3], [3, 1]]  # users in key order
    assert data.valid == [4, 2]
    assert data.test == [5, 4]
    assert data.n_items == 7
    assert data.source == "datasetB.pkl"
    # written back in the reference's layout, it is the same data
    back = recipe.reference_pickle(data)
    assert back["train"] == {0: [1, 2, 3], 1: [3, 1]}
    assert back["val"] == {0: [4], 1: [2]}
    assert back["test"] == {0: [5], 1: [4]}
    assert len(back["smap"]) == 6


def test_load_data_refuses_bad_files(tmp_path):
    path = _write(
        tmp_path / "bad.pkl", {"train": [[1, 2]], "val": [[3, 4]], "test": [[5]]}
    )
    with pytest.raises(ValueError, match="2 validation targets"):
        recipe.load_data("DiffuRec", tmp_path, data_file=path)
    path = _write(
        tmp_path / "big.pkl",
        {"train": [[1, 9]], "val": [[2]], "test": [[3]], "smap": {1: 1, 2: 2, 3: 3}},
    )
    with pytest.raises(ValueError, match="beyond"):
        recipe.load_data("DiffuRec", tmp_path, data_file=path)
    with pytest.raises(FileNotFoundError, match="ADRec"):
        recipe.load_data("DiffuRec", tmp_path, data_file=tmp_path / "none.pkl")


def test_keep_last_keeps_the_whole_history(tmp_path):
    # every prefix of the whole training sequence trains, as in the reference
    data = recipe.load_data(
        "DiffuRec",
        tmp_path,
        data_file=_write(
            tmp_path / "ml.pkl",
            {"train": [list(range(1, 40))], "val": [[40]], "test": [[41]]},
        ),
    )
    for model in recipe.MODELS:
        folder = write_atomic(data, tmp_path / model, keep_last=recipe.KEEP_LAST[model])
        lines = (folder / data.name / f"{data.name}.inter").read_text().splitlines()
        assert len(lines) == 1 + 41


def _scores(n_items, target, rank):
    """Scores of one user whose target is ranked ``rank`` (0 = first)."""
    scores = torch.linspace(1.0, 0.0, n_items)  # item i at rank i
    order = list(range(n_items))
    order.remove(target)
    order.insert(rank, target)
    return scores[torch.argsort(torch.tensor(order))]


class _Loop:
    """A reference ``model_train`` in miniature: train, validate, ..., test."""

    def __init__(self, recorder, metric):
        self.recorder, self.metric = recorder, metric

    def run(self, train, valid, test, epochs):
        assert len(train) == 2  # model_train reads len(tra_data_loader)
        for _ in range(epochs):
            for _batch in train:
                pass
            for scores, labels in valid:
                self.metric(scores, labels, [5, 10, 20])
        for scores, labels in test:
            self.metric(scores, labels, [5, 10, 20])


def test_recorder_gives_closed_form_metrics_per_epoch():
    n_items = 30
    # valid: two batches (users ranked 0, 2 | 12); epoch e shifts every rank by e
    ranks = {0: [[0, 2], [12]], 1: [[1, 3], [25]]}
    reported_calls = []

    def reference_metric(scores, labels, ks):  # stands in for hrs_and_ndcgs_k
        reported_calls.append(len(labels))
        return {"NDCG@10": 0.5}

    recorder = MetricRecorder()
    metric = recorder.wrap_metrics(reference_metric)
    valid_epochs = iter([0, 1])

    class Valid:
        def __iter__(self):
            epoch = next(valid_epochs)
            for batch in ranks[epoch]:
                targets = [3 + i for i in range(len(batch))]
                scores = torch.stack(
                    [_scores(n_items, t, r) for t, r in zip(targets, batch)]
                )
                yield scores, torch.tensor(targets).unsqueeze(1)

    test = [(torch.stack([_scores(n_items, 7, 4)]), torch.tensor([[7]]))]
    loaders = recipe.phase_loaders(recorder, [0, 1], Valid(), test)
    _Loop(recorder, metric).run(*loaders, epochs=2)
    result = recorder.result(2)

    def ndcg(rank, k=10):
        return 1.0 / math.log2(rank + 2) if rank < k else 0.0

    expected = [
        [0, (1.0 + 1.0 / math.log2(4) + 0.0) / 3],  # per user, not per batch
        [1, (ndcg(1) + ndcg(3) + 0.0) / 3],
    ]
    assert [e for e, _ in result["valid_curve"]] == [0, 1]
    for (_, got), (_, want) in zip(result["valid_curve"], expected):
        assert got == pytest.approx(want, abs=1e-6)
    assert result["test"]["ndcg@10"] == pytest.approx(1 / math.log2(6), abs=1e-6)
    assert result["test"]["ndcg@5"] == pytest.approx(1 / math.log2(6), abs=1e-6)
    assert result["test"]["hit@5"] == 1.0
    assert result["test"]["ndcg@20"] == pytest.approx(1 / math.log2(6), abs=1e-6)
    assert reported_calls == [2, 1, 2, 1, 1]  # the reference's own calls, unchanged
    assert result["epochs_trained"] == 2
    assert result["best_epoch"] == 0  # its values never improved after epoch 0


def _props_keys(model):
    keys = set()
    for name in ("overall.yaml", f"{model}.yaml"):
        with open(Path(props_dir()) / name, encoding="utf-8") as handle:
            keys |= set(yaml.safe_load(handle))
    return keys


@pytest.mark.parametrize("model", recipe.MODELS)
def test_our_overrides_are_keys_of_our_props(model):
    overrides = recipe.our_overrides(model, recipe.SETTINGS[model])
    assert set(overrides) <= _props_keys(model)
    assert overrides["MAX_ITEM_LIST_LENGTH"] == recipe.SETTINGS[model]["max_len"]
    assert overrides["epochs"] == recipe.SETTINGS[model]["epochs"]
    assert overrides["conditioning"] == (
        "sum" if model == "DiffuRec" else "cross_attention"
    )


@pytest.mark.parametrize("model", recipe.MODELS)
def test_our_model_builds_with_the_overrides(model):
    from recbole_diffusion.model import diffurec, diffurecsys

    overrides = recipe.our_overrides(model, recipe.SETTINGS[model])
    cls = diffurec.DiffuRec if model == "DiffuRec" else diffurecsys.DiffuRecSys
    ours = cls(unit_config(model, **overrides), UnitDataset())
    assert len(ours.blocks) == recipe.SETTINGS[model]["num_blocks"]
    assert ours.item_embedding.weight.shape[1] == recipe.SETTINGS[model]["hidden_size"]
    assert ours.offset_noise == 0.0
    assert ours.max_seq_length == recipe.SETTINGS[model]["max_len"]


def test_step_decay_maps_to_milestones():
    settings = dict(recipe.SETTINGS["DiffuRec"], epochs=25, decay_step=10)
    overrides = recipe.our_overrides("DiffuRec", settings)
    assert overrides["lr_scheduler"] == "step"
    assert overrides["lr_milestones"] == [10, 20]
    settings["epochs"] = 10  # StepLR(10) never acts within 10 epochs
    assert recipe.our_overrides("DiffuRec", settings)["lr_scheduler"] == "none"
    with pytest.raises(ValueError, match="uniformly"):
        recipe.our_overrides(
            "DiffuRec", dict(settings, schedule_sampler_name="fixstep")
        )


def test_settings_are_the_same_keys_and_json():
    import json

    assert set(recipe.SETTINGS) == set(recipe.MODELS) == set(recipe.PROTOCOL)
    assert set(recipe.SETTINGS["DiffuRec"]) == set(recipe.SETTINGS["DiffuRecSys"])
    json.dumps(recipe.SETTINGS)
    for notes in recipe.PROTOCOL.values():
        assert notes and all(isinstance(note, str) for note in notes)


def test_the_module_imports_nothing_of_a_reference():
    import sys

    for name in ("diffurec", "trainer", "training", "tools", "main", "step_sample"):
        module = sys.modules.get(name)
        assert module is None or "refs" not in str(getattr(module, "__file__", ""))
