"""Shared fixtures: a tiny synthetic dataset that trains in seconds.

The tiny dataset has sequential structure (each user walks through items with
a preferred stride), so a model that learns shows it within a few epochs,
while a run of one epoch still exercises the whole RecBole pipeline.
"""

import os

import numpy as np
import pytest
import torch
import yaml

from recbole_diffusion.config import props_dir

# Two cores are shared by the tests; more threads only add contention.
torch.set_num_threads(1)

# item ids 1..20, 0 is padding (a model with a mask token adds id 21 itself)
UNIT_N_ITEMS = 21


class UnitDataset:
    """What SequentialRecommender reads from a dataset: the item count."""

    def num(self, field):
        return UNIT_N_ITEMS


def unit_config(model, **overrides):
    """``props/<model>.yaml`` with RecBole's field names, as a plain dict.

    For building a model without loading data (``Model(config, UnitDataset())``);
    each test module shrinks the sizes with ``overrides``.
    """
    with open(os.path.join(props_dir(), f"{model}.yaml")) as handle:
        config = yaml.safe_load(handle)
    config.update(
        USER_ID_FIELD="user_id",
        ITEM_ID_FIELD="item_id",
        LIST_SUFFIX="_list",
        ITEM_LIST_LENGTH_FIELD="item_length",
        NEG_PREFIX="neg_",
        device="cpu",
    )
    config.update(overrides)
    return config


TINY_USERS = 60
TINY_ITEMS = 40


def write_tiny_dataset(root, name="tiny", users=TINY_USERS, items=TINY_ITEMS, seed=0):
    """Write ``root/name/name.inter`` and return ``root``."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(users):
        length = int(rng.integers(5, 17))
        start = int(rng.integers(0, items))
        stride = int(rng.integers(1, 4))
        for position in range(length):
            item = (start + position * stride) % items
            if rng.random() < 0.2:
                item = int(rng.integers(0, items))
            lines.append(f"u{user}\ti{item}\t{position}")
    with open(os.path.join(folder, f"{name}.inter"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(root)


def write_recall_dataset(root, name="recall", users=150, items=40, seed=0):
    """Write ``root/name/name.inter``: the next item is an earlier one, never the last.

    Each user returns to one anchor item between random others:
    ``a, s1, a, s2, ..., a, s_k, a`` (odd lengths 7 to 15), with the anchor
    ``a`` and every ``s`` uniform over the items (``s != a``). The test target
    is ``a`` and the test history ends with ``s_k``, an item the user never
    had before, so the last item alone says nothing about the target (chance
    HR@10 = 10 / items = 0.25) while the history before it gives it away. The
    validation target is ``s_k`` itself, unpredictable: validation says
    nothing here, only the test set does.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(users):
        anchor = int(rng.integers(0, items))
        pairs = int(rng.integers(3, 8))
        sequence = []
        for _ in range(pairs):
            other = int(rng.integers(0, items - 1))
            sequence += [anchor, other + (other >= anchor)]
        sequence.append(anchor)
        for position, item in enumerate(sequence):
            lines.append(f"u{user}\ti{item}\t{position}")
    with open(os.path.join(folder, f"{name}.inter"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(root)


@pytest.fixture(scope="session")
def recall_data_path(tmp_path_factory):
    return write_recall_dataset(str(tmp_path_factory.mktemp("recall")))


@pytest.fixture(scope="session")
def tiny_data_path(tmp_path_factory):
    return write_tiny_dataset(str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def tiny_config(tiny_data_path, tmp_path):
    """Config overrides for a seconds-long run on the tiny dataset."""
    return {
        "data_path": tiny_data_path,
        "epochs": 1,
        "train_batch_size": 32,
        "eval_batch_size": 64,
        "hidden_size": 16,
        "embedding_size": 16,
        "inner_size": 32,
        "MAX_ITEM_LIST_LENGTH": 10,
        "show_progress": False,
        "checkpoint_dir": str(tmp_path / "saved"),
        "log_wandb": False,
        "seed": 2020,
        "reproducibility": True,
        "worker": 0,
    }


def hand_metrics(model, eval_data, k=10):
    """HR@k and NDCG@k of ``model`` on ``eval_data``, computed here from its scores.

    Full ranking over all items but the padding item 0 (no history masking,
    as in every protocol here); the rank of the target is the number of items
    scored strictly higher. Independent of RecBole's evaluator and collector.
    """
    model.eval()
    hits, gains = [], []
    with torch.no_grad():
        for interaction, _, _, positive_i in eval_data:
            scores = model.full_sort_predict(interaction)  # [B N]
            scores[:, 0] = -float("inf")
            target = scores.gather(1, positive_i.view(-1, 1))  # [B 1]
            rank = (scores > target).sum(1)  # [B], 0 is the top
            hits.append(rank < k)
            gains.append(torch.where(rank < k, 1 / torch.log2(rank + 2.0), 0.0))
    return {
        f"hit@{k}": torch.cat(hits).float().mean().item(),
        f"ndcg@{k}": torch.cat(gains).mean().item(),
    }


def trained_parts(initial, trained, prefixes):
    """Which of the parameter groups named by ``prefixes`` training changed."""
    return {
        prefix
        for prefix in prefixes
        for key, value in trained.items()
        if key.startswith(prefix) and not torch.equal(value, initial[key])
    }
