"""--recommend leaves out what the user has, warns on ADRec's stage 1, writes no log."""

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_diffusion import cli
from recbole_diffusion.quick_start import run_recbole_diffusion
from recbole_diffusion.recommend import recommend

SETTINGS = {
    "epochs": 1,
    "train_batch_size": 32,
    "eval_batch_size": 64,
    "hidden_size": 16,
    "embedding_size": 16,
    "inner_size": 32,
    "MAX_ITEM_LIST_LENGTH": 10,
    "show_progress": False,
    "log_wandb": False,
    "seed": 2020,
    "reproducibility": True,
    "worker": 0,
    "state": "warning",
}
USERS = ["u1", "u2", "u3", "u4"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def checkpoints(tiny_data_path, tmp_path_factory):
    """SASRec's checkpoint, and ADRec's final and stage-1 checkpoints."""
    files = {}
    for model, extra in (
        ("SASRec", {}),
        ("ADRec", {"pretrain_epochs": 1, "warmup_epochs": 1, "n_heads": 2}),
    ):
        saved = tmp_path_factory.mktemp(f"saved_{model}")
        result = run_recbole_diffusion(
            model=model,
            dataset="tiny",
            config_dict=dict(
                SETTINGS, data_path=tiny_data_path, checkpoint_dir=str(saved), **extra
            ),
        )
        files[model] = result["model_file"]
    stem = (
        os.path.splitext(files["ADRec"])[0]
        .removesuffix("-stage3")
        .removesuffix("-stage2")
    )
    files["ADRec-stage1"] = stem + "-stage1.pth"
    assert os.path.isfile(files["ADRec-stage1"])
    return files


@pytest.fixture(scope="module")
def items_of(tiny_data_path):
    seen = collections.defaultdict(set)
    with open(os.path.join(tiny_data_path, "tiny", "tiny.inter")) as handle:
        next(handle)
        for line in handle:
            user, item, _ = line.rstrip("\n").split("\t")
            seen[user].add(item)
    return seen


def test_items_the_user_has_are_left_out_by_default(checkpoints, items_of):
    """Catches lists that repeat the user's own items (RecBole's case study hides them)."""
    result = recommend(checkpoints["SASRec"], USERS, topk=10)
    for entry in result["users"]:
        assert len(entry["items"]) == 10
        assert not set(entry["items"]) & items_of[entry["user"]]


def test_include_seen_keeps_them_and_filtering_only_removes(checkpoints, items_of):
    """Catches a mask on the wrong rows (another user's items) or a reordering."""
    every = recommend(checkpoints["SASRec"], USERS, topk=40, include_seen=True)
    unseen = recommend(checkpoints["SASRec"], USERS, topk=10)
    for full, short in zip(every["users"], unseen["users"]):
        assert set(full["items"]) & items_of[full["user"]]  # seen items ranked too
        expected = [i for i in full["items"] if i not in items_of[full["user"]]][:10]
        assert short["items"] == expected


def test_a_user_with_few_unseen_items_gets_a_shorter_list(checkpoints, items_of):
    """Catches items scored minus infinity (seen ones) padding the list."""
    result = recommend(checkpoints["SASRec"], ["u1"], topk=40)
    assert len(result["users"][0]["items"]) == 40 - len(items_of["u1"])
    assert all(score > float("-inf") for score in result["users"][0]["scores"])


def test_stage1_checkpoint_is_warned_about(checkpoints, capsys):
    """Catches an ADRec stage-1 checkpoint used without a word."""
    status = cli.main(
        ["--recommend", f"--model_file={checkpoints['ADRec-stage1']}", "--user_ids=u1"]
    )
    captured = capsys.readouterr()
    assert status == 0
    assert "stage-1 checkpoint" in captured.err and "stage3.pth" in captured.err
    status = cli.main(
        ["--recommend", f"--model_file={checkpoints['ADRec']}", "--user_ids=u1"]
    )
    assert status == 0 and "stage-1" not in capsys.readouterr().err


def test_recommend_writes_no_log_and_prints_no_warnings(checkpoints, tmp_path):
    """Catches the empty log file and the library warnings of a lookup."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run_recbole_diffusion.py"),
            "--recommend",
            f"--model_file={checkpoints['SASRec']}",
            "--user_ids=u1,u2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[1].startswith("u1: ")
    assert os.listdir(tmp_path) == []
