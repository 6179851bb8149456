"""Multi-process training (torch DDP, gloo on CPUs): --nproc of the run command."""

import os

import pytest
import torch
from conftest import write_tiny_dataset

from recbole_diffusion import cli
from recbole_diffusion.distributed import free_port, run_distributed
from recbole_diffusion.quick_start import load_data_and_model, run_recbole_diffusion
from recbole_diffusion.trainer.distributed import (
    UnpaddedShardSampler,
    shard_without_padding,
)

# An odd number of users: RecBole's padded sampler would evaluate one twice.
ODD_USERS = 61


def _ddp_settings(tmp_path, **overrides):
    """A one-epoch run on a tiny dataset with an odd number of users."""
    return {
        "data_path": write_tiny_dataset(str(tmp_path / "data"), users=ODD_USERS),
        "epochs": 1,
        "eval_batch_size": 64,
        "hidden_size": 16,
        "n_layers": 1,
        "MAX_ITEM_LIST_LENGTH": 10,
        "show_progress": False,
        "log_wandb": False,
        "seed": 2020,
        "worker": 0,
        "state": "warning",
        **overrides,
    }


@pytest.mark.parametrize("num_rows, world_size", [(5, 2), (60, 2), (61, 2), (61, 3)])
def test_evaluation_shards_cover_every_row_once(num_rows, world_size):
    shards = [
        list(UnpaddedShardSampler(num_rows, r, world_size)) for r in range(world_size)
    ]
    rows = [row for shard in shards for row in shard]
    assert sorted(rows) == list(range(num_rows))
    assert [len(s) for s in shards] == [
        len(UnpaddedShardSampler(num_rows, r, world_size)) for r in range(world_size)
    ]


def test_padded_sampler_of_an_evaluation_loader_is_replaced():
    rows = list(range(ODD_USERS))
    padded = [
        torch.utils.data.DistributedSampler(rows, num_replicas=2, rank=r, shuffle=False)
        for r in range(2)
    ]
    # What RecBole's evaluation loaders do: 62 rows for 61 users.
    assert sum(len(list(s)) for s in padded) == ODD_USERS + 1
    loaders = [
        torch.utils.data.DataLoader(rows, batch_size=8, sampler=s) for s in padded
    ]
    for loader in loaders:
        loader.sample_size = ODD_USERS
        shard_without_padding(loader)
    seen = [row for loader in loaders for batch in loader for row in batch.tolist()]
    assert sorted(seen) == rows


def test_two_gloo_processes_evaluate_the_same_users_as_one(tmp_path):
    """One epoch on 2 processes: every test user once, and, with the weights
    left at their (rank-0) initialisation by a learning rate too small to move
    any float32 weight (zero itself is refused), exactly the one-process
    metrics."""
    settings = _ddp_settings(
        tmp_path,
        learning_rate=1e-30,
        train_batch_size=32,
        diffusion_steps=8,
        reproducibility=True,
    )
    single = run_recbole_diffusion(
        model="DiffuRec",
        dataset="tiny",
        config_dict=dict(settings, checkpoint_dir=str(tmp_path / "one")),
    )
    multi = run_distributed(
        model="DiffuRec",
        dataset="tiny",
        config_dict=dict(settings, checkpoint_dir=str(tmp_path / "two")),
        nproc=2,
        port=free_port(),
    )
    assert len(single["test_users"]) == ODD_USERS
    assert len(multi["test_users"]) == ODD_USERS
    assert sorted(multi["test_users"]) == sorted(single["test_users"])
    assert multi["test_result"] == single["test_result"]
    # Only rank 0 wrote a checkpoint; it loads in one process (no rank in it).
    assert os.listdir(tmp_path / "two") == [os.path.basename(multi["model_file"])]
    config, model, *_ = load_data_and_model(multi["model_file"])
    assert config["single_spec"] and config["world_size"] is None


def test_shared_folders_exist_before_the_processes_start(
    tmp_path, monkeypatch, tiny_data_path
):
    """RecBole's processes create ./log/<model> and the checkpoint folder with
    a check-then-create; on a fresh machine two processes race and one fails,
    so the parent creates them first."""
    import torch.multiprocessing as mp

    monkeypatch.chdir(tmp_path)  # a fresh working directory: no ./log yet
    seen = {}

    def spawn(*args, **kwargs):
        seen["log"] = os.path.isdir(tmp_path / "log" / "DuoRec")
        seen["saved"] = os.path.isdir(tmp_path / "ckpt")

    monkeypatch.setattr(mp, "spawn", spawn)
    run_distributed(
        model="DuoRec",
        dataset="tiny",
        config_dict={"data_path": tiny_data_path, "checkpoint_dir": "ckpt"},
        nproc=2,
        port=free_port(),
    )
    assert seen == {"log": True, "saved": True}


@pytest.mark.parametrize("model", ["ADRec", "CDDRec", "DuoRec"])
def test_every_plugin_model_trains_on_two_gloo_processes(tmp_path, model, monkeypatch):
    """Whole-sequence data, three-stage training (ADRec's optimizer and DDP
    wrapper change per stage) and same-target sampling (DuoRec) under DDP:
    one epoch (per stage), every test user evaluated once, from a fresh
    working directory (no ./log yet)."""
    monkeypatch.chdir(tmp_path)
    settings = _ddp_settings(
        tmp_path,
        pretrain_epochs=1,
        warmup_epochs=1,
        train_batch_size=16,
        inner_size=32,
        diffusion_steps=4,
        checkpoint_dir=str(tmp_path / "saved"),
    )
    result = run_distributed(
        model=model, dataset="tiny", config_dict=settings, nproc=2, port=free_port()
    )
    assert sorted(result["test_users"]) == list(range(1, ODD_USERS + 1))
    assert 0 <= result["test_result"]["ndcg@10"] <= result["test_result"]["hit@10"]
    config, loaded, *_ = load_data_and_model(result["model_file"])
    assert type(loaded).__name__ == model


def test_nproc_beyond_the_machine_is_refused(tiny_data_path, capsys):
    status = cli.main(
        [
            "--model=DuoRec",
            "--dataset=tiny",
            f"--data_path={tiny_data_path}",
            f"--nproc={os.cpu_count() * 4 + 1}",
        ]
    )
    assert status == 2
    assert "more than this machine allows" in capsys.readouterr().err


def test_distributed_flags_are_checked(capsys):
    assert cli.main(["--nproc=two"]) == 2
    assert "--nproc: 'two' is not an integer" in capsys.readouterr().err
    assert cli.main(["--tune", "--nproc=2"]) == 2
    assert "cannot be used with --tune" in capsys.readouterr().err
