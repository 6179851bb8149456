"""Training parity of ADRec: the reference code and ours on the reference's ml-100k.

Both sides train on the ml-100k file of the ADRec repository
(``datasets/data/ml-100k/dataset.pkl``: 938 users, 1,008 items, leave-one-out)
with the same sizes and budget, from the same stage-1 item embedding (the
repository's ``src/saved/pretrain/ml-100k/pretrain.pth``, which its ``adrec``
model loads): 5 warm-up epochs with the embedding frozen, then joint epochs,
validation after every epoch, no early stopping. The reference runs its own
``trainer.model_train`` in a child process (``python -m
benchmarks.parity.train_adrec --child SPEC``); ours runs through the plugin's
pipeline in ``benchmarks.parity.training``.

Used by ``python -m benchmarks.parity.training --model=ADRec
--reference-dir=/tmp/refs/ADRec``.
"""

import argparse
import logging
import os
import pickle
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.parity.training_data import ReferenceData  # noqa: E402
from benchmarks.parity.training_metrics import (  # noqa: E402
    MetricRecorder,
    child_main,
    run_child,
)

__all__ = [
    "KEEP_LAST",
    "MODELS",
    "PROTOCOL",
    "SETTINGS",
    "load_data",
    "our_overrides",
    "pretrained_embedding",
    "run_reference",
]

MODELS = ("ADRec",)
DATA_FILE = Path("datasets", "data", "ml-100k", "dataset.pkl")
PRETRAINED_FILE = Path("src", "saved", "pretrain", "ml-100k", "pretrain.pth")
DATASET = "ml-100k"  # the reference's name: it sizes its item table by it

# The reference's config.yaml values, except the budget and the sequence
# length (50 there; 20 here, as in every parity run) and per-epoch validation.
# One epoch is 2 optimizer steps (938 users, batch 512), but each validation
# runs the 32-step reverse chain over the 938 users: the reference took 336 s
# for 7 epochs here (train 9 s, validation 38 s an epoch, 1 thread, with
# another job on the second core). So the budget is the paper's 5 warm-up
# epochs and 10 joint ones, about 12 minutes a run.
SETTINGS = {
    "ADRec": {
        "max_len": 20,
        "hidden_size": 128,
        "batch_size": 512,
        "dropout": 0.1,
        "emb_dropout": 0.3,
        "dif_blocks": 2,
        "diffusion_steps": 32,
        "lambda_uncertainty": 0.001,
        "noise_schedule": "trunc_lin",
        "lr": 0.001,
        "weight_decay": 1e-5,
        "warmup_epochs": 5,
        "joint_epochs": 10,
    }
}

# The reference trains on one row per user: the last max_len + 1 training
# items. With the last max_len + 3 items kept (and the two targets among
# them), RecBole's rows, validation and test histories are the same.
KEEP_LAST = {"ADRec": SETTINGS["ADRec"]["max_len"] + 3}

PROTOCOL = {
    "ADRec": [
        "neither side masks the user's history at evaluation (RecBole does not "
        "for sequential models); the reference also ranks the padding id 0, "
        "RecBole excludes it",
        "its metrics are the mean of per-batch means (batch 512: 512 and 426 "
        "users); both curves here are per-user means, recomputed from the "
        "scores it ranks (its own printed test values are kept in the record)",
        "model selection: the reference keeps the epoch at which any of HR@5, "
        "NDCG@5, HR@10, NDCG@10, HR@20, NDCG@20 improved last; ours the best "
        "validation NDCG@10 over the warm-up and joint stages",
        "the reference validates after every epoch but the first (its loop "
        "skips epoch 0; the guard is left in place here), so its curve starts "
        "at epoch 1, ours at epoch 0",
        "its learning rate follows CosineAnnealingLR(T_max=500), within 1% of "
        "1e-3 over 15 epochs; ours is held constant (lr_scheduler: none)",
        "its Adam state carries over from warm-up to joint training; ours "
        "builds a new Adam at each stage",
        "both start from the repository's stage-1 embedding "
        "(src/saved/pretrain/ml-100k/pretrain.pth), rows reordered to RecBole's "
        "item ids for ours",
        "keeping each user's last 23 items leaves 1,002 of the 1,008 items in "
        "our data (6 appear only earlier in a history, where the reference "
        "never trains on them either); RecBole ranks those 1,002, the "
        "reference all 1,009 ids (padding included)",
        "run-time patches: device cpu; `torch.load` of that embedding with "
        "weights_only=True (the reference passes False); `einops`/`torchtune` "
        "stubs (unused on this path); its progress bars silenced and its "
        "metric function wrapped to record every epoch (its values unchanged)",
    ]
}


def load_data(model, reference_dir):
    """The ADRec repository's ml-100k as :class:`ReferenceData`."""
    path = Path(reference_dir) / DATA_FILE
    with open(path, "rb") as handle:
        raw = pickle.load(handle)  # the reference's own file, read as it reads it
    return ReferenceData(
        name="parity-adrec-ml-100k",
        train=[list(map(int, items)) for items in raw["train"]],
        valid=[int(items[0]) for items in raw["val"]],
        test=[int(items[0]) for items in raw["test"]],
        n_items=1009,  # ids 0 .. 1008: item_num_create's 1008 items + padding
        source=str(DATA_FILE),
    )


def pretrained_embedding(model, reference_dir):
    """Path of the stage-1 embedding both sides start from."""
    return Path(reference_dir) / PRETRAINED_FILE


def our_overrides(model, settings):
    """Our ADRec's settings for the reference's ``settings``."""
    return {
        "MAX_ITEM_LIST_LENGTH": settings["max_len"],
        "hidden_size": settings["hidden_size"],
        "inner_size": 4 * settings["hidden_size"],
        "train_batch_size": settings["batch_size"],
        "hidden_dropout_prob": settings["dropout"],
        "attn_dropout_prob": settings["dropout"],
        "emb_dropout_prob": settings["emb_dropout"],
        "adm_layers": settings["dif_blocks"],
        "diffusion_steps": settings["diffusion_steps"],
        "lambda_scale": settings["lambda_uncertainty"],
        "noise_schedule": settings["noise_schedule"],
        "learning_rate": settings["lr"],
        "weight_decay": settings["weight_decay"],
        "hidden_act": "gelu_tanh",  # the reference's GELU
        "pretrain_epochs": 0,  # the stage-1 embedding is given
        "warmup_epochs": settings["warmup_epochs"],
        "epochs": settings["joint_epochs"],
        "lr_scheduler": "none",
        "train_windows": "last",
    }


def run_reference(model, reference_dir, settings, seed, work_dir, log_path):
    """Train the reference in a child process; return its curve and test metrics."""
    spec = {
        "reference_dir": str(Path(reference_dir).resolve()),
        "settings": settings,
        "seed": seed,
        "work_dir": str(Path(work_dir).resolve()),
    }
    return run_child("benchmarks.parity.train_adrec", spec, work_dir, log_path)


def _layout(reference_dir, work_dir):
    """The folders its relative paths expect, in ``work_dir``; returns its cwd."""
    source = work_dir / "src"
    links = {
        work_dir / "datasets" / "data" / DATASET / "dataset.pkl": reference_dir
        / DATA_FILE,
        source / "saved" / "pretrain" / DATASET / "pretrain.pth": reference_dir
        / PRETRAINED_FILE,
    }
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(target)
    return source


def _child(spec):
    import torch

    from benchmarks.parity.reference import import_reference

    torch.set_num_threads(1)
    reference_dir = Path(spec["reference_dir"])
    settings = spec["settings"]
    os.chdir(_layout(reference_dir, Path(spec["work_dir"])))
    modules = import_reference(
        "ADRec", reference_dir, ["logger", "utils", "metrics", "model", "trainer"]
    )
    trainer, utils = modules["trainer"], modules["utils"]

    def load_embedding(self):  # the reference's method, with weights_only=True
        path = os.path.join("saved", "pretrain", self.args.dataset, "pretrain.pth")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved["item_embedding.weight"]

    modules["model"].Att_Diffuse_model.load_pretrained_emb_weight = load_embedding
    recorder = MetricRecorder()
    trainer.tqdm = recorder.progress(trainer.tqdm)
    trainer.hrs_and_ndcgs_k = recorder.wrap_metrics(trainer.hrs_and_ndcgs_k)

    config = modules["logger"].load_config(str(reference_dir / "src" / "config.yaml"))
    args = argparse.Namespace(**config)
    epochs = settings["warmup_epochs"] + settings["joint_epochs"]
    for key in (
        "max_len",
        "hidden_size",
        "batch_size",
        "dropout",
        "emb_dropout",
        "dif_blocks",
        "diffusion_steps",
        "lambda_uncertainty",
        "noise_schedule",
        "lr",
        "weight_decay",
    ):
        setattr(args, key, settings[key])
    for key, value in {
        "dataset": DATASET,
        "device": "cpu",
        "model": "adrec",
        "random_seed": spec["seed"],
        "epochs": epochs,
        "eval_interval": 1,
        "patience": epochs + 1,
        "description": "parity",
        "log_file": "logs/",
    }.items():
        setattr(args, key, value)
    if settings["warmup_epochs"] != 5:
        raise ValueError("the reference unfreezes its embedding after epoch 5")

    logger = logging.getLogger("adrec-reference")
    utils.fix_random_seed_as(args.random_seed)
    args = trainer.item_num_create(args)
    network = trainer.choose_model(args)
    loaders = trainer.load_data(args)
    start = time.perf_counter()
    _, reported = trainer.model_train(network, *loaders, args, logger, "parity")
    seconds = time.perf_counter() - start
    result = recorder.result(epochs)
    result["test_reported"] = {
        key.lower().replace("hr@", "hit@"): value / 100
        for key, value in reported.items()
    }
    result["wall_seconds"] = seconds
    return result


if __name__ == "__main__":
    child_main(_child, __doc__.splitlines()[0])
