"""Training parity of CDDRec: the reference code and ours on the reference's Beauty.

Both sides train on ``data/Beauty.txt`` of the CDDRec repository (one line per
user, ``user item item ...`` oldest first: 22,363 users, items 1 .. 12,101;
the last item is the test target, the one before it the validation target)
with the same sizes and epoch budget, validation after every epoch and no
early stopping.

The reference runs in a child process (``python -m
benchmarks.parity.train_cddrec --child SPEC.json``) at one thread on the CPU.
Its ``main.py`` is never imported (it parses the command line and trains at
import): the child replays its steps with the same calls in the same order
(``set_seed``, ``get_user_seqs``, the three ``CDDRecDataset`` loaders,
``CDDRecModel``, ``CDDRecTrainer``, then per epoch ``train`` and ``valid``
with its ``EarlyStopping`` deciding which epoch's checkpoint is kept; at the
end that checkpoint is reloaded, validated again and tested), except that
the loop never breaks. The scores its trainer returns for every validation
and for the test are printed as one JSON line and summarised by
:func:`summarise`. Ours runs through the plugin's pipeline in
``benchmarks.parity.training``.

Epochs are numbered from 0, as the reference numbers them (epoch 0 is the
validation after the first pass over the training data). ``train_seconds``
is the time of the training passes only; ``wall_seconds`` adds the
validations.

Used by ``python -m benchmarks.parity.training --model=CDDRec
--reference-dir=/tmp/refs/CDDRec``.
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.parity.training_data import ReferenceData  # noqa: E402
from benchmarks.parity.training_metrics import child_main, run_child  # noqa: E402

__all__ = [
    "OPTIONS",
    "KEEP_LAST",
    "MODELS",
    "PROTOCOL",
    "REFERENCE_METRICS",
    "SETTINGS",
    "full_sort_metrics",
    "load_data",
    "our_overrides",
    "read_sequences",
    "reference_args",
    "run_reference",
    "selected_epoch",
    "summarise",
]

MODELS = ("CDDRec",)
# Reference switches a variant run may set (python -m benchmarks.parity.training
# --variant=... --set linear_infonce=true --sides=reference).
OPTIONS = ("mask_history", "linear_infonce")
DATA_NAME = "Beauty"
DATA_FILE = Path("data", f"{DATA_NAME}.txt")
CL_WEIGHT = 0.3  # the reference's in-view and cross-view weights (fixed in its code)

# The reference's argparse defaults, except hidden_size (128 there), T (30 in
# its Beauty command, 20 by default) and the budget. Its cross-view InfoNCE
# is a [2N 2N] matrix per diffusion step with N = batch x length = 2,560
# tokens (padding included): about 1.8 s per step and batch here whatever the
# data, so an epoch (175 batches) costs about 175 x 1.9 x T seconds. Measured
# (reference, 1 thread, the other core busy, H 64, L 20, batch 128): T 10:
# 17.8 s a batch (first 4 batches); T 2: 3.8 s a batch (first 12 batches),
# about 11 minutes an epoch; a full-ranking validation of the 22,363 users
# takes 28 s; with linear_infonce on, about 1.0 s a batch at T 2. T 2 is its
# smallest (T 1 fails: it reads the posterior variance of step 1), so one
# epoch at T 2 (about 12.5 minutes a run with the final validation and test)
# is the smallest budget with a full epoch. The InfoNCE cost grows with the
# square of the batch, so batch 32 (the same on both sides) makes a batch 16x
# cheaper and an epoch about 4x: T 2, batch 32 and 3 epochs give a curve of 3
# points in about 11 minutes a reference run.
SETTINGS = {
    "CDDRec": {
        "max_seq_length": 20,
        "hidden_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "hidden_act": "gelu",
        "attention_probs_dropout_prob": 0.2,  # encoder attention and the decoder
        "hidden_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "T": 2,
        "beta_1": 1e-4,
        "beta_T": 0.002,
        "temperature": 0.5,
        "cl_weight": CL_WEIGHT,
        "lr": 0.001,
        "batch_size": 32,
        "weight_decay": 0.0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "epochs": 3,
    }
}

# The reference trains on one row per user: the last max_seq_length items of
# items[:-3] as inputs, the next item at every position as targets. Ours with
# train_windows: last builds the same row from the whole sequence, and keeping
# whole sequences keeps every item in RecBole's item set (12,101, as in the
# reference; cutting 869 longer users to their last L + 3 items would drop
# items seen only earlier). Validation and test histories are the last L items
# before the target on both sides.
KEEP_LAST = {"CDDRec": None}

PROTOCOL = {
    "CDDRec": [
        "training data: one row per user, the last L items of the training "
        "part (all but the last three items) as input and the next item at "
        "every position as target, the same rows as ours with train_windows: "
        "last; validation and test read the last L items before the target",
        "the reference ranks its whole item table of max id + 2 rows: the "
        "padding id 0 and the augmentation's mask id (12,102) are scored too; "
        "ours ranks the 12,101 items",
        "history masking: at validation it sets the scores of the user's "
        "training items (all but the last two) to 0, at test those of the "
        "training and validation items (all but the last); 0, not -inf: its "
        "scores are cosines in [-1, 1], so a masked item still outranks every "
        "item of negative cosine. Ours masks nothing (RecBole's sequential "
        "protocol). The option mask_history: false (a run_reference argument "
        "or a settings key) runs it with an empty mask",
        "its inference samples x = mu + sqrt(v) z at step 0 with the variance "
        "of step 1 and z from torch's generator, so its rankings are noisy; "
        "ours scores mu. Both rank by cosine similarity",
        "its decoder (a stock nn.TransformerDecoderLayer, batch_first off, on "
        "[B L H]) attends over the batch axis, so a user's scores depend on the "
        "other users of its evaluation batch (31 at batch 32, in file order); ours attends "
        "causally over the user's own positions (Eq. 3). Its decoder's "
        "LayerNorm epsilon is 1e-5 and its fused q/k/v projection keeps "
        "Xavier-uniform init; ours uses 1e-12 (one key for encoder and "
        "decoder; its encoder uses 1e-12) and N(0, 0.02)",
        "averaging: the mean over all users of HR@k and NDCG@k of its top-40 "
        "list, as ours",
        "model selection: its EarlyStopping keeps the epoch at which HR@10 or "
        "NDCG@10 (either) last beat the previously kept epoch's value; the "
        "kept model is reloaded, validated again (new noise) and tested. Ours "
        "keeps the best validation NDCG@10. Its patience (50) is never reached "
        "here and the replayed loop never stops early",
        "linear_infonce is off by default in its main.py (its README's "
        "commands turn it on): off, both InfoNCE terms are the exact NT-Xent "
        "over the 2N normalised tokens (as ours); on, the denominator is a "
        "random-Fourier-feature estimate (8H features, fresh Gaussian draws "
        "at every call) of the sum of exp(cos / tau) over all 2N tokens, self "
        "included. The parity runs use off; the option linear_infonce: true "
        "(a run_reference argument or a settings key) runs it on",
        "its augmentation is required (without --data_augmentation the "
        "training step fails) and always reorders: it compares a one-element "
        "list with 0 and 1, so the crop and mask branches never run; the "
        "shuffled 60% window is drawn on the whole training part before it is "
        "cut to L. Ours draws crop, mask or reorder per sequence",
        "its loss adds the cross-divergence of the augmented view at every "
        "step, weighted by the item ids of the augmented input (the ids, not a "
        "0/1 mask); ours has no such term (the paper's Eq. 8)",
        "its cross-view InfoNCE pairs all B x L positions of the two views, "
        "padding included (N = 2,560 tokens at batch 128, L 20); ours pairs "
        "the real positions by item slot. The in-view term uses the real "
        "positions on both sides",
        "its negatives are uniform over 1 .. max id + 1 (mask id included) "
        "outside the user's whole sequence, validation and test targets "
        "included; ours outside the training row",
        "at step 0 it adds noise of step 1's variance to x_hat in training "
        "too; ours uses the posterior variance 0",
        "budget, the same on both sides: T = 2 diffusion steps (its Beauty "
        "command uses 30, main.py's default 20; 2 is the smallest it runs), "
        "hidden size 64 (128 there), batch 32 (128 there), 3 epochs (1000 "
        "with patience 50 there): its exact InfoNCE, quadratic in the batch's "
        "tokens, makes an epoch at batch 128 cost about 11 minutes on one CPU "
        "core at T 2 and about 5.5 minutes more per added step. lr 1e-3, L 20, "
        "beta 1e-4 .. 0.002, tau 0.5 and the loss weights 0.3 are the "
        "reference's",
        "run-time patches: `np.float = float` (its MRR uses the alias numpy "
        "1.24 removed); CPU only (CUDA_VISIBLE_DEVICES empty, --no_cuda, "
        "cuda_condition False); main.py not imported, its steps replayed in "
        "the same order with the same seed call; its data file copied and its "
        "log and checkpoint written in a scratch folder",
    ]
}

# The order of the list its trainer's get_full_sort_score returns.
REFERENCE_METRICS = (
    "hit@1",
    "ndcg@1",
    "hit@5",
    "ndcg@5",
    "hit@10",
    "ndcg@10",
    "hit@15",
    "ndcg@15",
    "hit@20",
    "ndcg@20",
    "hit@40",
    "ndcg@40",
    "mrr",
)
REPORTED = ("ndcg@10", "hit@10", "ndcg@20", "hit@20", "ndcg@5", "hit@5")


def _check_model(model):
    if model not in MODELS:
        raise ValueError(f"train_cddrec handles {MODELS}, not {model!r}")


def read_sequences(path):
    """Each line's items (ints, oldest first), in file order, as the reference reads them."""
    sequences = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if fields:
                sequences.append([int(item) for item in fields[1:]])
    return sequences


def load_data(model, reference_dir):
    """The CDDRec repository's Beauty as :class:`ReferenceData` (its split)."""
    _check_model(model)
    sequences = read_sequences(Path(reference_dir) / DATA_FILE)
    short = [n for n, items in enumerate(sequences) if len(items) < 3]
    if short:
        raise ValueError(f"{DATA_FILE}: users {short[:5]} have fewer than 3 items")
    return ReferenceData(
        name="parity-cddrec-beauty",
        train=[items[:-2] for items in sequences],
        valid=[items[-2] for items in sequences],
        test=[items[-1] for items in sequences],
        # ids 1 .. max id, 0 pads; the reference's table has one row more
        # (max id + 1, its augmentation's mask token)
        n_items=max(max(items) for items in sequences) + 1,
        source=str(DATA_FILE),
    )


def our_overrides(model, settings):
    """Our CDDRec's settings for the reference's ``settings``."""
    _check_model(model)
    hidden = settings["hidden_size"]
    return {
        "MAX_ITEM_LIST_LENGTH": settings["max_seq_length"],
        "hidden_size": hidden,
        "inner_size": 4 * hidden,  # its encoder's feed-forward is 4H wide
        "n_layers": settings["num_hidden_layers"],
        "n_heads": settings["num_attention_heads"],
        "hidden_act": settings["hidden_act"],
        "attn_dropout_prob": settings["attention_probs_dropout_prob"],
        "hidden_dropout_prob": settings["hidden_dropout_prob"],
        # its decoder layer's dropout is attention_probs_dropout_prob
        "decoder_dropout_prob": settings["attention_probs_dropout_prob"],
        "initializer_range": settings["initializer_range"],
        "layer_norm_eps": 1e-12,  # its encoder's (its decoder's: 1e-5)
        "diffusion_steps": settings["T"],
        "noise_schedule": "linear",
        "beta_start": settings["beta_1"],
        "beta_end": settings["beta_T"],
        "tau": settings["temperature"],
        "cl_weight": settings["cl_weight"],
        "cd_score": "dot",  # its cross-divergence is the dot product
        "score": "cos",  # it ranks by cosine similarity
        "aug_crop_ratio": 0.6,
        "aug_mask_ratio": 0.3,
        "aug_reorder_ratio": 0.6,
        "learning_rate": settings["lr"],
        "weight_decay": settings["weight_decay"],
        "train_batch_size": settings["batch_size"],
        "epochs": settings["epochs"],
        "lr_scheduler": "none",
        "train_windows": "last",
    }


def reference_args(settings, seed, work_dir, linear_infonce=False):
    """The values of the reference's command-line arguments, as a dict.

    ``settings`` gives the model and training values; the rest are what its
    ``main.py`` would set for ``--data_augmentation --no_cuda`` (plus
    ``--linear_infonce`` when asked), with the data and output folders in
    ``work_dir``.
    """
    if settings["cl_weight"] != CL_WEIGHT:
        raise ValueError(
            f"cl_weight={settings['cl_weight']}: the reference's weights are "
            f"fixed at {CL_WEIGHT} in its code"
        )
    work_dir = Path(work_dir)
    args = {
        key: settings[key]
        for key in (
            "max_seq_length",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "hidden_act",
            "attention_probs_dropout_prob",
            "hidden_dropout_prob",
            "initializer_range",
            "T",
            "beta_1",
            "beta_T",
            "temperature",
            "lr",
            "batch_size",
            "weight_decay",
            "adam_beta1",
            "adam_beta2",
            "epochs",
        )
    }
    args.update(
        data_dir=str(work_dir / "data") + os.sep,
        output_dir=str(work_dir / "output") + os.sep,
        data_name=DATA_NAME,
        do_eval=False,
        model_name="CDDRec",
        experimentation="parity",
        data_augmentation=True,
        linear_infonce=bool(linear_infonce),
        loss_type="BPR",
        no_cuda=True,
        log_freq=1,
        seed=int(seed),
        gpu_id="",
        load_model=False,
    )
    return args


def full_sort_metrics(scores):
    """Name the list its ``get_full_sort_score`` returns (fractions)."""
    if len(scores) != len(REFERENCE_METRICS):
        raise ValueError(
            f"expected {len(REFERENCE_METRICS)} values ({', '.join(REFERENCE_METRICS)}), "
            f"got {len(scores)}"
        )
    return {name: float(value) for name, value in zip(REFERENCE_METRICS, scores)}


def selected_epoch(valid):
    """The epoch whose checkpoint its ``EarlyStopping`` keeps.

    ``valid`` is ``[[epoch, hit@10, ndcg@10], ...]`` in training order. An
    epoch is saved when its HR@10 or its NDCG@10 beats the last saved
    epoch's (the first epoch is always saved); the last saved one is kept.
    """
    kept, best = None, None
    for epoch, hit, ndcg in valid:
        if best is None or hit > best[0] or ndcg > best[1]:
            kept, best = epoch, (hit, ndcg)
    return kept


def summarise(raw):
    """The record of one reference run from the child's raw result."""
    valid = [(epoch, full_sort_metrics(scores)) for epoch, scores in raw["valid"]]
    expected = selected_epoch([[e, m["hit@10"], m["ndcg@10"]] for e, m in valid])
    if raw["best_epoch"] != expected:
        raise RuntimeError(
            f"the reference kept epoch {raw['best_epoch']}, its rule gives {expected}"
        )
    test = full_sort_metrics(raw["test"])
    return {
        "valid_curve": [[epoch, round(m["ndcg@10"], 6)] for epoch, m in valid],
        "test": {key: round(test[key], 6) for key in REPORTED},
        "train_seconds": round(raw["train_seconds"], 2),
        "wall_seconds": round(raw["wall_seconds"], 2),
        "epochs_trained": len(valid),
        "best_epoch": raw["best_epoch"],
        "best_valid_rerun": {
            key: round(full_sort_metrics(raw["best_valid"])[key], 6) for key in REPORTED
        },
        "test_all": {key: round(value, 6) for key, value in test.items()},
        "options": raw["options"],
    }


def run_reference(
    model,
    reference_dir,
    settings,
    seed,
    work_dir,
    log_path,
    *,
    mask_history=None,
    linear_infonce=None,
    max_train_batches=None,
    max_eval_batches=None,
):
    """Train the reference in a child process; return its curve and test metrics.

    Options, reference only (the parity runs keep the defaults):
    ``mask_history=False`` gives its evaluation an empty history matrix (no
    score set to 0); ``linear_infonce=True`` turns on its approximate
    InfoNCE. Left out (None), each is read from ``settings`` under the same
    key (``settings["mask_history"]``, default True;
    ``settings["linear_infonce"]``, default False), so that the framework,
    which passes ``settings`` only, can run them as separate settings.
    ``max_train_batches`` / ``max_eval_batches`` cut each training epoch /
    each evaluation to its first batches (smoke runs and timing only).
    """
    _check_model(model)
    if mask_history is None:
        mask_history = settings.get("mask_history", True)
    if linear_infonce is None:
        linear_infonce = settings.get("linear_infonce", False)
    reference_dir = Path(reference_dir).resolve()
    work_dir = Path(work_dir).resolve()
    if work_dir == reference_dir or reference_dir in work_dir.parents:
        raise ValueError(f"work_dir {work_dir} is inside the checkout {reference_dir}")
    source = reference_dir / DATA_FILE
    if not source.is_file():
        raise FileNotFoundError(
            f"{source} is missing: is {reference_dir} a CDDRec checkout?"
        )
    (work_dir / "data").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, work_dir / "data" / source.name)
    shutil.rmtree(work_dir / "output", ignore_errors=True)
    spec = {
        "reference_dir": str(reference_dir),
        "work_dir": str(work_dir),
        "args": reference_args(settings, seed, work_dir, linear_infonce),
        "mask_history": bool(mask_history),
        "max_train_batches": max_train_batches,
        "max_eval_batches": max_eval_batches,
    }
    raw = run_child("benchmarks.parity.train_cddrec", spec, work_dir, log_path)
    return summarise(raw)


class _FirstBatches:
    """The first ``limit`` batches of a loader; ``len`` as the trainer averages by it."""

    def __init__(self, loader, limit):
        self.loader, self.limit = loader, limit

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index >= self.limit:
                break
            yield batch

    def __len__(self):
        return min(self.limit, len(self.loader))


def _child(spec):
    """Replay the reference's main.py training run; return the raw scores."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch looks for a GPU
    import numpy as np
    import torch
    from scipy.sparse import csr_matrix
    from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

    from benchmarks.parity.reference import import_reference

    torch.set_num_threads(1)
    if not hasattr(np, "float"):
        np.float = float  # its cal_mrr predates numpy 1.24
    os.chdir(spec["work_dir"])
    modules = import_reference(
        "CDDRec",
        spec["reference_dir"],
        ["utils", "modules", "datasets", "models", "trainers"],
    )
    utils = modules["utils"]
    args = argparse.Namespace(**spec["args"])

    # main.py's steps, in its order
    utils.set_seed(args.seed)
    utils.check_path(args.output_dir)
    args.cuda_condition = False
    args.data_file = args.data_dir + args.data_name + ".txt"
    user_seq, max_item, valid_matrix, test_matrix, num_users = utils.get_user_seqs(
        args.data_file
    )
    args.item_size = max_item + 2
    args.num_users = num_users
    args.mask_id = max_item + 1
    args.log_file = os.path.join(args.output_dir, "reference-log.txt")
    print(str(args), flush=True)
    if not spec["mask_history"]:  # no score is set to 0
        valid_matrix = csr_matrix(valid_matrix.shape, dtype=valid_matrix.dtype)
        test_matrix = csr_matrix(test_matrix.shape, dtype=test_matrix.dtype)
    args.train_matrix = valid_matrix
    args.checkpoint_path = os.path.join(args.output_dir, "checkpoint.pt")

    loaders = []
    for data_type in ("train", "valid", "test"):
        dataset = modules["datasets"].CDDRecDataset(args, user_seq, data_type=data_type)
        sampler = (RandomSampler if data_type == "train" else SequentialSampler)(
            dataset
        )
        loader = DataLoader(dataset, sampler=sampler, batch_size=args.batch_size)
        limit = spec[
            "max_train_batches" if data_type == "train" else "max_eval_batches"
        ]
        loaders.append(_FirstBatches(loader, limit) if limit else loader)
    model = modules["models"].CDDRecModel(args=args)
    trainer = modules["trainers"].CDDRecTrainer(model, *loaders, args)

    early_stopping = utils.EarlyStopping(
        args.checkpoint_path, patience=50, verbose=True
    )
    valid, best_epoch, train_seconds = [], None, 0.0
    start = time.perf_counter()
    for epoch in range(args.epochs):  # never breaks: no early stopping
        begin = time.perf_counter()
        trainer.train(epoch)
        train_seconds += time.perf_counter() - begin
        scores, _, _ = trainer.valid(epoch, full_sort=True)
        early_stopping(np.array([scores[4], scores[5]]), trainer.model)
        if early_stopping.counter == 0:  # it saved this epoch's checkpoint
            best_epoch = epoch
        valid.append([epoch, [float(s) for s in scores]])
        print(f"epoch {epoch}: {time.perf_counter() - begin:.1f} s", flush=True)
    wall_seconds = time.perf_counter() - start

    trainer.model.load_state_dict(torch.load(args.checkpoint_path, weights_only=True))
    best_valid, _, _ = trainer.valid("best", full_sort=True)
    trainer.args.train_matrix = test_matrix
    test, _, _ = trainer.test("best", full_sort=True)
    return {
        "valid": valid,
        "best_epoch": best_epoch,
        "best_valid": [float(s) for s in best_valid],
        "test": [float(s) for s in test],
        "train_seconds": train_seconds,
        "wall_seconds": wall_seconds,
        "options": {
            "mask_history": spec["mask_history"],
            "linear_infonce": args.linear_infonce,
            "max_train_batches": spec["max_train_batches"],
            "max_eval_batches": spec["max_eval_batches"],
            "item_size": args.item_size,
            "users": num_users,
        },
    }


if __name__ == "__main__":
    child_main(_child, __doc__.splitlines()[0])
