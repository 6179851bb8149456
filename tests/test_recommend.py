"""Top-k recommendations from a checkpoint: --recommend of the run command."""

import collections
import csv
import os

import pytest
import torch

from recbole_diffusion import cli
from recbole_diffusion.quick_start import load_data_and_model, run_recbole_diffusion
from recbole_diffusion.recommend import _last_rows, full_history_rows

TINY_SETTINGS = {
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


@pytest.fixture(scope="module", params=["DuoRec", "SASRec"])
def checkpoint(request, tiny_data_path, tmp_path_factory):
    """A plugin model and a RecBole model, trained one epoch on the tiny data."""
    saved = tmp_path_factory.mktemp(f"saved_{request.param}")
    result = run_recbole_diffusion(
        model=request.param,
        dataset="tiny",
        config_dict=dict(
            TINY_SETTINGS, data_path=tiny_data_path, checkpoint_dir=str(saved)
        ),
    )
    return result["model_file"]


def test_recommend_prints_top_k_for_three_users(checkpoint, tmp_path, capsys):
    output = tmp_path / "top.csv"
    status = cli.main(
        [
            "--recommend",
            f"--model_file={checkpoint}",
            "--user_ids=u1,u2,u3",
            "--topk=5",
            f"--output_file={output}",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    lines = {line.split(":")[0]: line for line in printed.splitlines()}
    for user in ("u1", "u2", "u3"):
        items = lines[user].split(": ", 1)[1].split()
        assert len(items) == 5 and len(set(items)) == 5
        assert all(item.startswith("i") for item in items)  # tokens, not ids
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 15
    assert [r["rank"] for r in rows[:5]] == ["1", "2", "3", "4", "5"]
    scores = [float(r["score"]) for r in rows[:5]]
    assert scores == sorted(scores, reverse=True)
    printed_u1 = lines["u1"].split(": ", 1)[1].split()
    assert [r["item_id"] for r in rows if r["user_id"] == "u1"] == printed_u1


def test_history_is_the_users_whole_sequence(checkpoint, tiny_data_path):
    """The documented choice: every known interaction, test item included."""
    config, model, data, train_data, valid_data, test_data = load_data_and_model(
        checkpoint
    )
    by_user = collections.defaultdict(list)
    with open(os.path.join(tiny_data_path, "tiny", "tiny.inter")) as handle:
        next(handle)
        for line in handle:
            user, item, time = line.rstrip("\n").split("\t")
            by_user[user].append((float(time), item))
    users = ["u1", "u2", "u3"]
    uids = torch.tensor([data.field2token_id["user_id"][u] for u in users])
    splits = [test_data._dataset, valid_data._dataset, train_data._dataset]
    history = full_history_rows(
        config, test_data._dataset, _last_rows(splits, "user_id", uids)
    ).inter_feat
    max_length = config["MAX_ITEM_LIST_LENGTH"]
    for row, user in enumerate(users):
        expected = [item for _, item in sorted(by_user[user])][-max_length:]
        length = int(history["item_length"][row])
        ids = history["item_id_list"][row][:length]
        assert list(data.id2token("item_id", ids)) == expected


def test_unknown_user_id_is_refused_with_examples(checkpoint, capsys):
    status = cli.main(
        ["--recommend", f"--model_file={checkpoint}", "--user_ids=u1,nobody"]
    )
    error = capsys.readouterr().err
    assert status == 2
    assert "Unknown user id 'nobody'" in error
    assert "Valid ids include: u0, u1" in error


def test_checkpoint_of_another_dataset_is_refused(checkpoint, capsys):
    status = cli.main(
        [
            "--recommend",
            f"--model_file={checkpoint}",
            "--user_ids=u1",
            "--dataset=ml-100k",
        ]
    )
    assert status == 2
    assert "was trained on dataset 'tiny', not 'ml-100k'" in capsys.readouterr().err


class _NotAllowed:
    pass


@pytest.mark.parametrize("kind", ["missing", "pickled object", "no config"])
def test_missing_or_unsafe_checkpoint_is_refused(tmp_path, capsys, kind):
    path = tmp_path / "model.pth"
    if kind == "pickled object":
        torch.save({"config": _NotAllowed(), "state_dict": {}}, path)
    elif kind == "no config":
        torch.save({"weight": torch.zeros(2)}, path)
    status = cli.main(["--recommend", f"--model_file={path}", "--user_ids=u1"])
    error = capsys.readouterr().err
    assert status == 2
    expected = {
        "missing": "does not exist",
        "pickled object": "cannot be loaded safely",
        "no config": "is not a recbole-diffusion checkpoint",
    }[kind]
    assert expected in error


def test_recommend_flags_are_checked(capsys):
    assert cli.main(["--recommend", "--user_ids=u1"]) == 2
    assert "--recommend needs --model_file" in capsys.readouterr().err
    assert cli.main(["--user_ids=u1"]) == 2
    assert "only used with --recommend" in capsys.readouterr().err
    assert cli.main(["--recommend", "--tune", "--model_file=x", "--user_ids=1"]) == 2
    assert "cannot be combined" in capsys.readouterr().err
