"""Training parity's own machinery: the data it writes, the metrics it records,
the evaluation it runs on our side, and the verdict on the page.

Each test names the mistake it catches. None needs a reference checkout.
"""

import json
import math
import pickle
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.parity import training, training_page
from benchmarks.parity.training_data import (
    ReferenceData,
    recbole_split_config,
    write_atomic,
)
from benchmarks.parity.training_metrics import MetricRecorder, adrec_phase, rank_metrics


def _data():
    # user 1: 7 training items; user 2: 3; user 3: 2 (the shortest allowed)
    return ReferenceData(
        name="paritytiny",
        train=[[5, 6, 7, 8, 9, 10, 11], [12, 5, 6], [7, 10]],
        valid=[12, 7, 8],
        test=[13, 8, 9],
        n_items=14,
        source="fake.pkl",
    )


# --------------------------------------------------------------------------- #
# data: the reference's split survives RecBole's loading
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("keep_last", [None, 5])
def test_recbole_split_gives_the_reference_targets_and_histories(tmp_path, keep_last):
    """Catches: positions written out of order, the split not leave-one-out,
    keep_last cutting one item too many or too few, users renumbered out of
    the reference's order."""
    from recbole_diffusion.quick_start import build_pipeline

    data = _data()
    write_atomic(data, tmp_path, keep_last=keep_last)
    config = recbole_split_config()
    config.update(
        data_path=str(tmp_path),
        MAX_ITEM_LIST_LENGTH=4,
        hidden_size=8,
        inner_size=16,
        n_layers=1,
        n_heads=1,
        epochs=1,
        show_progress=False,
        checkpoint_dir=str(tmp_path / "saved"),
        log_wandb=False,
        worker=0,
    )
    _, dataset, train_data, valid_data, test_data, _ = build_pipeline(
        "SASRec", data.name, config_dict=config
    )
    item_token = dataset.field2id_token["item_id"]
    user_token = dataset.field2id_token["user_id"]

    def rows(loader):
        inter = loader.dataset.inter_feat
        users = [int(user_token[u]) for u in inter["user_id"].tolist()]
        targets = [int(item_token[i]) for i in inter["item_id"].tolist()]
        histories = [
            [int(item_token[i]) for i in seq[:length]]
            for seq, length in zip(
                inter["item_id_list"].tolist(), inter["item_length"].tolist()
            )
        ]
        return users, targets, histories

    for loader, targets, extra in (
        (valid_data, data.valid, 0),
        (test_data, data.test, 1),
    ):
        users, got, histories = rows(loader)
        assert got == [targets[u - 1] for u in users]
        for user, history in zip(users, histories):
            full = list(data.sequences(keep_last))[user - 1]
            expected = full[: len(full) - 2 + extra][-4:]
            assert history == expected
    users, targets, _ = rows(train_data)
    for user in set(users):
        full = list(data.sequences(keep_last))[user - 1]
        got = [t for u, t in zip(users, targets) if u == user]
        assert got == full[1:-2]  # every training item but the first is a target


def test_users_without_a_validation_row_are_refused(tmp_path):
    """Catches: a user with one training item, whom RecBole's leave-one-out
    gives a test row but no validation row (the reference validates it)."""
    short = ReferenceData("short", [[1, 2], [3]], [4, 5], [6, 7], 8, "f")
    with pytest.raises(ValueError, match="user 2"):
        write_atomic(short, tmp_path)


def test_reference_data_refuses_mismatched_lengths():
    """Catches: a reader that drops the users without a validation target."""
    with pytest.raises(ValueError, match="validation"):
        ReferenceData("x", [[1], [2]], [3], [4, 5], 6, "f")


# --------------------------------------------------------------------------- #
# metrics of the reference's loop
# --------------------------------------------------------------------------- #
def test_rank_metrics_match_closed_forms():
    """Catches: 0- vs 1-based ranks, log base, ties counted against the target."""
    scores = torch.tensor(
        [
            [0.0, 9.0, 1.0, 2.0],  # target 1: rank 0
            [0.0, 1.0, 3.0, 2.0],  # target 1: two higher, rank 2
            [0.0, 5.0, 5.0, 1.0],  # target 2: a tie only, rank 0
        ]
    )
    got = rank_metrics(scores, torch.tensor([1, 1, 2]), ks=(1, 3))
    assert got["hit@1"].tolist() == [1.0, 0.0, 1.0]
    assert got["hit@3"].tolist() == [1.0, 1.0, 1.0]
    assert got["ndcg@3"] == pytest.approx([1.0, 0.5, 1.0])  # 1 / log2(2 + 2) = 0.5
    assert got["ndcg@1"] == pytest.approx([1.0, 0.0, 1.0])


def test_phases_of_the_reference_progress_bars():
    """Catches: validation bars taken for training ones (both say "Epoch")."""
    assert adrec_phase("Epoch: 3") == ("train", 3)
    assert adrec_phase("Denoising..., Epoch: 3") == ("valid", 3)
    assert adrec_phase(None) == ("test", None)


def test_recorder_builds_per_user_curves_and_the_reference_choice():
    """Catches: a curve of batch means instead of user means, test batches
    mixed into validation, the best epoch chosen by NDCG@10 alone."""
    recorder = MetricRecorder()

    def fake_tqdm(iterable=None, *args, **kwargs):
        assert kwargs["disable"] is True  # no progress bar in the log
        return iterable

    bar = recorder.progress(fake_tqdm)
    metric = recorder.wrap_metrics(
        lambda scores, labels, ks: {"NDCG@10": float(scores[0, 0])}
    )
    top, miss = torch.tensor([[0.0, 1.0, 0.5]]), torch.tensor([[0.0, 0.0, 1.0]])
    targets = torch.tensor([[1]])
    bar([], desc="Epoch: 0")
    bar([], desc="Denoising..., Epoch: 1")
    metric(top, targets, [10])  # user at rank 0
    metric(miss.repeat(3, 1), targets.repeat(3, 1), [10])  # 3 users, rank 1
    bar([], desc="Denoising..., Epoch: 2")
    metric(miss, targets, [10])
    bar([])  # test
    metric(top, targets, [10])
    result = recorder.result(epochs=3)
    expected = (1.0 + 3 / math.log2(3)) / 4  # per user, not (1 + 1/log2 3) / 2
    assert result["valid_curve"][0] == [1, pytest.approx(expected, abs=1e-6)]
    assert result["valid_curve"][1] == [2, pytest.approx(1 / math.log2(3), abs=1e-6)]
    assert result["test"]["ndcg@10"] == pytest.approx(1.0)
    # its own value is the first score: epoch 1 mean of (0.0, 0.0); epoch 2
    # 0.0 again -> no metric improved after epoch 1? 0 > 0 is false, so None
    assert result["best_epoch"] is None


def test_recorder_best_epoch_is_the_last_improvement_of_any_metric():
    """Catches: keeping the first best epoch, or only NDCG@10's."""
    recorder = MetricRecorder()
    values = {1: {"A": 0.1, "B": 0.5}, 2: {"A": 0.2, "B": 0.1}, 3: {"A": 0.1, "B": 0.1}}
    for epoch, reported in values.items():
        recorder.enter(("valid", epoch))
        recorder.record(torch.zeros(1, 2), torch.tensor([1]), reported)
    assert recorder.best_epoch_any_metric() == 2  # A improved at 2, nothing at 3


# --------------------------------------------------------------------------- #
# our side
# --------------------------------------------------------------------------- #
def test_reference_embedding_is_reordered_to_recbole_ids(tmp_path):
    """Catches: the reference's rows used in RecBole's order (wrong items)."""
    reference = torch.arange(6 * 2, dtype=torch.float32).view(6, 2)
    torch.save({"item_embedding.weight": reference}, tmp_path / "pretrain.pth")
    dataset = types.SimpleNamespace(
        field2id_token={"item_id": np.array(["[PAD]", "4", "1", "5"])}
    )
    path = training._reordered_embedding(
        tmp_path / "pretrain.pth", dataset, "item_id", tmp_path / "out" / "e.pt"
    )
    got = torch.load(path, weights_only=True)
    assert torch.equal(got, reference[[0, 4, 1, 5]])


def test_recbole_sequential_evaluation_masks_no_history(tiny_config):
    """Catches: the page's claim that both sides rank the history turning
    false (a RecBole change, or a setting that makes it mask the history)."""
    from recbole_diffusion.quick_start import build_pipeline

    _, _, _, _, test_data, _ = build_pipeline(
        "SASRec", "tiny", config_dict={**tiny_config, "n_layers": 1, "n_heads": 1}
    )
    for _, history_index, _, _ in test_data:
        assert history_index is None


def test_rerun_skips_recorded_runs(tmp_path, monkeypatch):
    """Catches: an interrupted comparison rerunning (and recording) finished runs."""
    calls = []
    fake = types.SimpleNamespace(
        SETTINGS={"ADRec": {"epochs": 1}},
        KEEP_LAST={"ADRec": None},
        PROTOCOL={"ADRec": ["note"]},
        load_data=lambda model, ref: _data(),
        run_reference=lambda model, ref, settings, seed, work, log: (
            calls.append(seed)
            or {
                "valid_curve": [[0, 0.1]],
                "test": {"ndcg@10": 0.1},
                "train_seconds": 1.0,
            }
        ),
    )
    monkeypatch.setattr(training, "recipe", lambda model: fake)
    raw = tmp_path / "parity.jsonl"
    kwargs = dict(sides=["reference"], work_dir=tmp_path / "w", raw_path=raw)
    training.run_training_parity("ADRec", tmp_path, seeds=[1, 2], **kwargs)
    training.run_training_parity("ADRec", tmp_path, seeds=[1, 2, 3], **kwargs)
    assert calls == [1, 2, 3]
    records = [json.loads(line) for line in raw.read_text().splitlines()]
    assert [r["seed"] for r in records] == [1, 2, 3]
    assert {r["kind"] for r in records} == {"training"}
    # a changed budget is a new comparison
    fake.SETTINGS["ADRec"]["epochs"] = 2
    training.run_training_parity("ADRec", tmp_path, seeds=[1], **kwargs)
    assert calls == [1, 2, 3, 1]


def test_variant_options_are_parsed_and_checked(tmp_path, monkeypatch):
    """Catches: "--set x=true" kept as the string "true", and a misspelt
    setting silently ignored by a variant run."""
    assert training.parse_options(["linear_infonce=true", "T=4", "tau=0.5"]) == {
        "linear_infonce": True,
        "T": 4,
        "tau": 0.5,
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        training.parse_options(["linear_infonce"])
    fake = types.SimpleNamespace(SETTINGS={"ADRec": {"epochs": 1}}, OPTIONS=("switch",))
    monkeypatch.setattr(training, "recipe", lambda model: fake)
    with pytest.raises(ValueError, match="epohcs"):
        training.run_training_parity(
            "ADRec",
            tmp_path,
            variant="v",
            options={"epohcs": 2},
            raw_path=tmp_path / "r",
        )


def test_our_overrides_name_real_settings():
    """Catches: a misspelt key in the ADRec recipe, silently ignored by RecBole."""
    import yaml

    from benchmarks.parity import train_adrec
    from recbole_diffusion.config import props_dir

    known = {}
    for name in ("overall.yaml", "ADRec.yaml"):
        with open(f"{props_dir()}/{name}", encoding="utf-8") as handle:
            known.update(yaml.safe_load(handle))
    overrides = train_adrec.our_overrides("ADRec", train_adrec.SETTINGS["ADRec"])
    assert set(overrides) - set(known) == set()


def test_adrec_data_reader(tmp_path):
    """Catches: validation/test targets read as lists, or users dropped."""
    from benchmarks.parity import train_adrec

    folder = tmp_path / "datasets" / "data" / "ml-100k"
    folder.mkdir(parents=True)
    raw = {"train": [[1, 2, 3], [4, 5]], "val": [[4], [6]], "test": [[5], [1]]}
    (folder / "dataset.pkl").write_bytes(pickle.dumps(raw))
    data = train_adrec.load_data("ADRec", tmp_path)
    assert data.train == [[1, 2, 3], [4, 5]]
    assert data.valid == [4, 6] and data.test == [5, 1]
    assert list(data.sequences(3)) == [[3, 4, 5], [5, 6, 1]]


# --------------------------------------------------------------------------- #
# the page's verdict
# --------------------------------------------------------------------------- #
def test_within_noise_rules():
    """Catches: a verdict that ignores the spread, or passes any gap."""
    assert training_page.within_noise([0.105, 0.095], [0.1, 0.1])[0] is True  # 0%
    assert training_page.within_noise([0.12, 0.12], [0.1, 0.1])[0] is False  # 20%, sd 0
    # 20% apart but noisy: pooled sd 0.0141, gap 0.02 < 2 sd
    assert training_page.within_noise([0.13, 0.11], [0.11, 0.09])[0] is True
    assert training_page.within_noise([0.2], [0.1])[0] is False  # one seed: no sd
    # noisy but far apart: gap 0.1 is 7 pooled sd (0.0141)
    assert training_page.within_noise([0.20, 0.22], [0.10, 0.12])[0] is False


def test_page_shows_both_sides_and_the_ratio(tmp_path):
    """Catches: sides swapped in the ratio, or runs of an older budget mixed in."""

    def run(side, seed, ndcg, fingerprint="new", finished="2026-12-07T06"):
        return {
            "kind": "training",
            "model": "ADRec",
            "side": side,
            "seed": seed,
            "fingerprint": fingerprint,
            "finished_at": finished,
            "settings": {"epochs": 3},
            "data": {"source": "d.pkl", "users": 3, "items": 9, "interactions": 20},
            "protocol": ["a note"],
            "valid_curve": [[0, ndcg / 2], [1, ndcg]],
            "test": {
                "ndcg@10": ndcg,
                "hit@10": 2 * ndcg,
                "ndcg@20": ndcg,
                "hit@20": ndcg,
            },
            "train_seconds": 10.0,
            "epochs_trained": 2,
            "best_epoch": 1,
        }

    variant = run("reference", 1, 0.07, fingerprint="v", finished="2026-12-08")
    variant.update(variant="linear", options={"linear_infonce": True})
    records = [
        variant,
        run("ours", 1, 0.9, fingerprint="old", finished="2026-12-01"),
        run("reference", 1, 0.10),
        run("reference", 2, 0.10),
        run("ours", 1, 0.05),
        run("ours", 2, 0.05),
    ]
    text = "\n".join(training_page.training_section(records, "ADRec", tmp_path))
    assert "| ndcg@10 | 0.1000 ± 0.0000 | 0.0500 ± 0.0000 | 0.500 | **no**" in text
    assert "0.9000" not in text
    # the newer variant run is listed beside seed 1's main run, not instead of it
    assert "| linear | linear_infonce: True | reference | 1 | 0.0700 | 0.1000 |" in text
    assert "- linear, reference, seed 1 (from epoch 0): 0.0350, 0.0700" in text
    summary = "\n".join(training_page.training_summary(records))
    assert (
        "| ADRec | `d.pkl` | 2 | 0.1000 ± 0.0000 (2) | 0.0500 ± 0.0000 (2) | 0.500 | **no**"
        in summary
    )
    assert (tmp_path / "parity.ADRec.curves.png").stat().st_size > 0


# --------------------------------------------------------------------------- #
# review additions: our side end to end, the run loop, boundaries, mappings
# --------------------------------------------------------------------------- #
def test_rank_metrics_boundary_at_k():
    """Catches: ``rank <= k`` (k items above the target still a hit)."""
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0], [0.0, 5.0, 4.0, 3.0, 2.0]])
    got = rank_metrics(scores, torch.tensor([4, 3]), ks=(3,))  # ranks 3 and 2
    assert got["hit@3"].tolist() == [0.0, 1.0]
    assert got["ndcg@3"] == pytest.approx([0.0, 1 / math.log2(4)])


def test_our_side_runs_the_whole_budget_and_reports_the_tested_epoch(
    tiny_data_path, tmp_path
):
    """Catches: epochs numbered from 1, early stopping left on, the curve
    chosen by the wrong extreme, @5 metrics or decimals lost, seed ignored."""
    settings = {"epochs": 3}
    fake = types.SimpleNamespace(
        our_overrides=lambda model, s: {
            "epochs": s["epochs"],
            "hidden_size": 8,
            "inner_size": 16,
            "n_layers": 1,
            "n_heads": 1,
            "MAX_ITEM_LIST_LENGTH": 10,
            "train_batch_size": 32,
        }
    )
    original = training.recipe
    training.recipe = lambda model: fake
    try:
        config = training.our_config(
            "SASRec", settings, "tiny", tiny_data_path, 7, tmp_path / "ckpt"
        )
    finally:
        training.recipe = original
    assert config["seed"] == 7 and config["stopping_step"] > 3
    assert config["valid_metric"] == "NDCG@10" and config["topk"] == [5, 10, 20]
    config.pop("load_col")  # the tiny file's own columns
    config.pop("filter_inter_by_user_or_item")
    result = training._ours_child(
        {"model": "SASRec", "dataset": "tiny", "config": config}
    )
    epochs = [epoch for epoch, _ in result["valid_curve"]]
    assert epochs == [0, 1, 2] and result["epochs_trained"] == 3
    scores = [score for _, score in result["valid_curve"]]
    best = max(range(3), key=lambda i: (scores[i], i))  # the last of tied maxima
    assert result["best_epoch"] == best
    assert {"hit@5", "ndcg@5", "ndcg@10", "hit@20"} <= set(result["test"])
    assert any(round(v, 4) != v for v in scores + list(result["test"].values()))


def test_run_loop_writes_the_kept_items_and_labels_variants(tmp_path, monkeypatch):
    """Catches: keep_last not applied to our data, the record's data counts
    wrong, a variant writing over the main run's folder, the options not
    reaching the run, a variant that repeats the defaults taken for the main run."""
    seen = []

    def fake_child(module, spec, run_dir, log_path):
        seen.append((spec, Path(run_dir), Path(log_path)))
        return {"valid_curve": [[0, 0.1]], "test": {"ndcg@10": 0.1}, "train_seconds": 1}

    fake = types.SimpleNamespace(
        SETTINGS={"ADRec": {"epochs": 1}},
        KEEP_LAST={"ADRec": 4},
        OPTIONS=("switch",),
        PROTOCOL={"ADRec": []},
        load_data=lambda model, ref: _data(),
        our_overrides=lambda model, s: {
            "epochs": s["epochs"],
            "switch_seen": s.get("switch"),
        },
    )
    monkeypatch.setattr(training, "recipe", lambda model: fake)
    monkeypatch.setattr(training, "run_child", fake_child)
    raw = tmp_path / "raw.jsonl"
    kwargs = dict(sides=["ours"], work_dir=tmp_path / "w", raw_path=raw, seeds=[1])
    (record,) = training.run_training_parity("ADRec", tmp_path, **kwargs)
    spec, run_dir, _ = seen[0]
    inter = Path(spec["config"]["data_path"]) / "paritytiny" / "paritytiny.inter"
    rows = inter.read_text().splitlines()[1:]
    per_user = {}
    for row in rows:
        per_user.setdefault(row.split("\t")[0], []).append(int(row.split("\t")[1]))
    assert per_user["1"] == [10, 11, 12, 13] and per_user["2"] == [5, 6, 7, 8]
    assert record["data"]["items"] == 13 and record["data"]["keep_last"] == 4
    # a variant with the default value: its own runs, folder and fingerprint
    (same,) = training.run_training_parity(
        "ADRec", tmp_path, variant="same", options={"epochs": 1}, **kwargs
    )
    assert same["variant"] == "same" and len(seen) == 2
    (switched,) = training.run_training_parity(
        "ADRec", tmp_path, variant="on", options={"switch": True}, **kwargs
    )
    spec, run_dir, log_path = seen[2]
    assert "on-" in run_dir.name and "on-" in log_path.name
    assert spec["config"]["switch_seen"] is True
    assert switched["fingerprint"] != record["fingerprint"]


def test_within_noise_edges():
    """Catches: the gap divided by our mean, the pooled sd without its /2,
    and identical zero means called different."""
    assert training_page.within_noise([0.0905] * 2, [0.1] * 2)[0] is True  # 9.5% of ref
    # 2.5 pooled sd apart (sd 0.01 both): no; the /2-less pooled sd says 1.8
    assert (
        training_page.within_noise([0.115, 0.125, 0.135], [0.09, 0.10, 0.11])[0]
        is False
    )
    assert training_page.within_noise([0.0, 0.0], [0.0, 0.0])[0] is True


def test_adrec_overrides_map_each_setting():
    """Catches: a recipe key fed from the wrong setting (names alone pass)."""
    from benchmarks.parity import train_adrec

    settings = {
        "max_len": 21,
        "hidden_size": 40,
        "batch_size": 33,
        "dropout": 0.11,
        "emb_dropout": 0.37,
        "dif_blocks": 3,
        "diffusion_steps": 17,
        "lambda_uncertainty": 0.0013,
        "noise_schedule": "cosine",
        "lr": 0.0021,
        "weight_decay": 3e-5,
        "warmup_epochs": 5,
        "joint_epochs": 9,
    }
    assert train_adrec.our_overrides("ADRec", settings) == {
        "MAX_ITEM_LIST_LENGTH": 21,
        "hidden_size": 40,
        "inner_size": 160,
        "train_batch_size": 33,
        "hidden_dropout_prob": 0.11,
        "attn_dropout_prob": 0.11,
        "emb_dropout_prob": 0.37,
        "adm_layers": 3,
        "diffusion_steps": 17,
        "lambda_scale": 0.0013,
        "noise_schedule": "cosine",
        "learning_rate": 0.0021,
        "weight_decay": 3e-5,
        "hidden_act": "gelu_tanh",
        "pretrain_epochs": 0,
        "warmup_epochs": 5,
        "epochs": 9,
        "lr_scheduler": "none",
        "train_windows": "last",
    }
    assert (
        train_adrec.KEEP_LAST["ADRec"] == train_adrec.SETTINGS["ADRec"]["max_len"] + 3
    )


def test_cddrec_and_diffurec_overrides_map_each_setting():
    """Catches: CDDRec's beta ends, temperature or dropouts swapped, DiffuRec's
    lambda, dropouts or step decay fed from the wrong setting."""
    from benchmarks.parity import train_cddrec, train_diffurec

    cdd = dict(train_cddrec.SETTINGS["CDDRec"])
    cdd.update(
        beta_1=1.1e-4,
        beta_T=3.3e-3,
        temperature=0.41,
        cl_weight=0.3,
        attention_probs_dropout_prob=0.23,
        hidden_dropout_prob=0.07,
        num_attention_heads=2,
        hidden_size=48,
        T=3,
    )
    got = train_cddrec.our_overrides("CDDRec", cdd)
    assert (got["beta_start"], got["beta_end"], got["tau"]) == (1.1e-4, 3.3e-3, 0.41)
    assert (got["attn_dropout_prob"], got["decoder_dropout_prob"]) == (0.23, 0.23)
    assert got["hidden_dropout_prob"] == 0.07 and got["n_heads"] == 2
    assert got["inner_size"] == 192 and got["diffusion_steps"] == 3

    diffu = dict(train_diffurec.SETTINGS["DiffuRec"])
    diffu.update(
        dropout=0.12,
        emb_dropout=0.34,
        lambda_uncertainty=0.002,
        gamma=0.2,
        decay_step=2,
        epochs=5,
        weight_decay=1e-4,
        num_blocks=3,
    )
    got = train_diffurec.our_overrides("DiffuRec", diffu)
    assert (got["hidden_dropout_prob"], got["attn_dropout_prob"]) == (0.12, 0.12)
    assert got["emb_dropout_prob"] == 0.34 and got["lambda_uncertainty"] == 0.002
    assert (got["lr_scheduler"], got["lr_milestones"], got["lr_gamma"]) == (
        "step",
        [2, 4],
        0.2,
    )
    assert got["weight_decay"] == 1e-4 and got["n_layers"] == 3
    assert got["inference_steps"] is None and got["offset_noise"] == 0.0
    assert train_diffurec.our_overrides("DiffuRecSys", diffu)["conditioning"] == (
        "cross_attention"
    )
    diffu["conditioning"] = "sum"  # a variant's switch reaches our model
    assert train_diffurec.our_overrides("DiffuRecSys", diffu)["conditioning"] == "sum"


def test_child_entry_point_and_run_child(tmp_path, monkeypatch):
    """Catches: a child's result line not read back (or the first of two taken),
    and a failed child passing silently."""
    from benchmarks.parity.training_metrics import run_child

    (tmp_path / "echo_child.py").write_text(
        "from benchmarks.parity.training_metrics import RESULT_PREFIX, child_main\n"
        "print(RESULT_PREFIX + '{\"got\": -1}')\n"
        "child_main(lambda spec: {'got': spec['x']}, 'echo')\n"
    )
    (tmp_path / "failing_child.py").write_text(  # a result, then a crash
        "print('PARITY_RESULT {}')\nraise SystemExit(3)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert run_child("echo_child", {"x": 3}, tmp_path / "w", tmp_path / "a.log") == {
        "got": 3
    }
    with pytest.raises(RuntimeError, match="exit 3"):
        run_child("failing_child", {}, tmp_path / "w2", tmp_path / "b.log")
