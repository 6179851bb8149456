"""Training parity of DiffuRec and DiffuRecSys: the reference codes and ours, same data.

Each reference trains on its own data with the sizes and budget of
:data:`SETTINGS`, validating after every epoch and never stopping early:

- DiffuRec (WHUIR/DiffuRec): the ml-100k file of the ADRec repository
  (``datasets/data/ml-100k/dataset.pkl``: 938 users, 1,008 items), which the
  ADRec authors prepared for their DiffuRec baseline. The reference's own
  ``main.main`` runs, its command line made from the settings.
- DiffuRecSys (shararezr/DiffuRecSys): its repository's Amazon Beauty file,
  ``datasetB.pkl`` (the one its ``main.py`` loads; 22,363 users, 12,101
  items). Its ``main()`` draws t-SNE plots and runs batch-1 inference over
  every user after training, so the child runs only main()'s statements up to
  ``model_train``, with its functions and in its order.

The reference runs in a child process (``python -m
benchmarks.parity.train_diffurec --child SPEC``, one thread) in a scratch
folder laid out as its relative paths expect. There its trainer module is
patched in memory: validation also after epoch 0, its data loaders wrapped to
tell training, validation and test apart, and its metric function wrapped to
record the scores it ranks (its own values pass through unchanged; see
:mod:`benchmarks.parity.training_metrics`). Nothing of the reference is
imported by this module itself, only inside the child.

Used by ``python -m benchmarks.parity.training --model=DiffuRec
--reference-dir=/tmp/refs/DiffuRec`` (and ``--model=DiffuRecSys``).
"""

import copy
import os
import pickle
import sys
import types
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
    "default_data_file",
    "load_data",
    "our_overrides",
    "phase_loaders",
    "reference_pickle",
    "run_reference",
]

MODELS = ("DiffuRec", "DiffuRecSys")
# Settings a variant may add (--variant=... --set conditioning=sum --sides=ours):
# our approximator's conditioning, to locate a gap in the cross-attention.
OPTIONS = ("conditioning",)

# DiffuRec's data lives in another checkout: the ADRec repository, next to the
# DiffuRec checkout (``/tmp/refs/ADRec`` beside ``/tmp/refs/DiffuRec``).
ADREC_ML100K = Path("ADRec", "datasets", "data", "ml-100k", "dataset.pkl")
DIFFURECSYS_BEAUTY = Path("datasetB.pkl")  # what its main.py loads
_NAMES = {
    "DiffuRec": ("parity-diffurec-ml-100k", "ml-100k"),
    "DiffuRecSys": ("parity-diffurecsys-beauty", "beauty"),
}
_MODULES = {  # the reference's data and trainer modules, then its main.py
    "DiffuRec": ("utils", "step_sample", "diffurec", "model", "trainer", "main"),
    "DiffuRecSys": ("tools", "step_sample", "diffurec", "model", "training", "main"),
}
_TRAINER = {"DiffuRec": "trainer", "DiffuRecSys": "training"}
# the guard that skips validation after epoch 0, cut from model_train's source
_FIRST_EPOCH_GUARD = "epoch_temp != 0 and "

# Shared by both sides: the reference's argument names and defaults, except the
# parity sizes (max_len 20, hidden 64), DiffuRecSys's block count and the
# budget. Measured for the reference on this machine (one thread, on a core
# shared with other jobs; the lower figures with less load):
# - DiffuRec on ml-100k: 101 batches of 512 in 76-116 s, validation of the
#   938 users (32-step chain) in 11-17 s, the test as long: 4 epochs take
#   6-9 minutes (2 epochs ran in 191 s).
# - DiffuRecSys on Beauty, 4 blocks: 257 batches in 269 s, validation of the
#   22,363 users in 416 s, the test 363 s (18 minutes for one epoch). Its
#   block loop feeds the history to every block and keeps only the last
#   block's output, so its 4 blocks compute what 1 block does (3 unused); with
#   num_blocks 1 an epoch trains in 85 s and validates in 105 s, the test
#   takes about 110 s (1 epoch ran in 312 s): 2 epochs take about 8 minutes.
#   Ours then also has the reference's effective depth (cross-attention and
#   one block).
SETTINGS = {
    "DiffuRec": {
        "max_len": 20,
        "hidden_size": 64,
        "num_blocks": 4,
        "dropout": 0.1,
        "emb_dropout": 0.3,
        "batch_size": 512,
        "lr": 0.001,
        "weight_decay": 0.0,
        "decay_step": 100,  # StepLR: x gamma every decay_step epochs
        "gamma": 0.1,
        "diffusion_steps": 32,
        "lambda_uncertainty": 0.001,
        "noise_schedule": "trunc_lin",
        "schedule_sampler_name": "lossaware",
        "epochs": 4,
    },
    "DiffuRecSys": {
        "max_len": 20,
        "hidden_size": 64,
        "num_blocks": 1,  # what its 4 blocks compute (see above)
        "dropout": 0.1,
        "emb_dropout": 0.3,
        "batch_size": 512,
        "lr": 0.001,
        "weight_decay": 0.0001,
        "decay_step": 30,
        "gamma": 0.1,
        "diffusion_steps": 32,
        "lambda_uncertainty": 0.001,
        "noise_schedule": "trunc_lin",
        "schedule_sampler_name": "lossaware",
        "epochs": 2,
    },
}

# Both references train on every prefix of each user's whole training sequence
# (``Data_Train.split_onebyone``: one row per training item after the first,
# its history cut to the last max_len items), as RecBole's augmentation does;
# validation reads the training sequence, test adds the validation item. So
# the whole history is kept.
KEEP_LAST = {"DiffuRec": None, "DiffuRecSys": None}

_EVALUATION = [
    "the reference ranks every id of its item table, padding id 0 included "
    "(scores x0_hat . E^T, whose row 0 it trains like any other), and masks no "
    "history item; RecBole leaves out id 0",
    "its printed metrics are means of per-batch means (torch.topk hits; "
    "batches of batch_size users, the last one smaller); valid_curve and test "
    "here are per-user means recomputed from the scores it ranks, as RecBole "
    "averages (ties count for the target), and its own values are kept as "
    "valid_curve_reported and test_reported",
    "model selection: after each validation the reference keeps a copy of the "
    "model if any of HR@5, NDCG@5, HR@10, NDCG@10, HR@20, NDCG@20 (percent, "
    "rounded to 4 places) beat its best so far, and tests the last copy "
    "(best_epoch is the epoch of that copy); ours keeps the best validation "
    "NDCG@10",
    "training data: one row per prefix of the user's whole training sequence, "
    "the history cut to its last max_len items and left-padded with 0 "
    "(`Data_Train.split_onebyone`), shuffled each epoch; validation history = "
    "training sequence, test history = training sequence + validation item: the "
    "rows and histories of RecBole's augmentation and leave-one-out split",
    "its `lossaware` timestep sampler is never given losses (the update is "
    "commented out in its model), so it stays uniform, like ours; its weights "
    "are not used in the loss",
    "its learning rate follows StepLR(decay_step, gamma), which does not act "
    "within this budget; ours gets the same milestones (lr_scheduler step) "
    "where one falls inside the budget, else none",
]
_PATCHES = [
    "run-time patches: device cpu; `np.int = int` set before the import (as in "
    "the equivalence check); validation after every epoch including epoch 0 "
    "(the `epoch_temp != 0 and` guard cut from `model_train`'s source in "
    "memory), eval_interval 1, patience epochs + 1 (no early stop); its data "
    "loaders wrapped to note the phase, its `hrs_and_ndcgs_k` wrapped to "
    "record the scores it ranks and its `copy.deepcopy` to note the epoch it "
    "keeps (their results unchanged); seeded by its main's "
    "`fix_random_seed_as(seed)` (random, numpy, torch)",
]
_DIFFUREC_MODEL = [
    "approximator deviations of ours (documented): padded keys masked (the "
    "reference masks padded queries only, so real positions attend to the left "
    "padding, and short prefixes carry much of it at max_len 20); padding row 0 "
    "zero and frozen (the reference trains a random row 0 that histories "
    "attend to); Xavier-normal weights and zero biases for every Linear (the "
    "reference: Xavier-normal for the FFN and attention-output weights only, "
    "torch's defaults elsewhere, e.g. Q/K/V projections, step MLP, biases); "
    "dropout draws differ (another generator)",
]
PROTOCOL = {
    "DiffuRec": [
        "data: ml-100k of the ADRec repository (Nemo-1024/ADRec at 0a30ef7, "
        "datasets/data/ml-100k/dataset.pkl; 938 users, 1,008 items, ids 1..1008), "
        "converted to DiffuRec's pickle layout (per-user dicts and an `smap` of "
        "the 1,008 ids: its item_num is len(smap), its table 1,009 rows) at "
        "`../datasets/data/ml-100k/dataset.pkl`, read by its own `main.main`, "
        "whose argument parser gets the settings as a command line",
        *_EVALUATION,
        *_DIFFUREC_MODEL,
        *_PATCHES,
    ],
    "DiffuRecSys": [
        "data: Amazon Beauty, the repository's `datasetB.pkl` (the file its "
        "main.py loads; 22,363 users, 12,101 items; its `dataset.pkl` is "
        "MovieLens-1M, 6,040 users and 3,706 items, and `datasetT.pkl` Amazon "
        "Toys, 19,412 users and 11,924 items); rewritten unchanged from the "
        "loaded data in its layout",
        "its main() is not called as is (after training it draws t-SNE plots "
        "and runs batch-1 inference over every user): the child runs main()'s "
        "statements up to `model_train` (seed, data, loaders, model) with its "
        "own functions, in its order, on main.py's default arguments updated "
        "with the settings",
        *_EVALUATION,
        "its approximator is not ours (documented deviation, no switch): each "
        "reference block runs a linear cross-attention (query softmax over the "
        "head width, key softmax over the heads) whose padded positions are "
        "filled with -1e9, then self-attention and the FFN, sharing one "
        "LayerNorm between the two attention sublayers and with no block-output "
        "dropout; its block loop feeds the history to every block, so only the "
        "last block counts. Ours: one softmax cross-attention, then num_blocks "
        "blocks in sequence. num_blocks is 1 here, so both have one block (its "
        "default 4 only adds 3 blocks whose output it drops, at 4x the cost). "
        "The curves are not expected to coincide",
        "offset noise is off in the reference at this commit: ours runs with "
        "offset_noise 0; ours keeps DiffuRec's other deviations (key masks, "
        "zero padding row, Xavier init)",
        "batch size 512 (the reference's), not the paper's 1024 of "
        "props/DiffuRecSys.yaml",
        *_PATCHES,
    ],
}


def default_data_file(model, reference_dir):
    """The reference's data file for ``model`` (see the module docstring)."""
    reference_dir = Path(reference_dir)
    if model == "DiffuRec":
        return reference_dir.resolve().parent / ADREC_ML100K
    if model == "DiffuRecSys":
        return reference_dir / DIFFURECSYS_BEAUTY
    raise ValueError(f"unknown model {model!r}: one of {', '.join(MODELS)}")


def _per_user(values):
    """A per-user table (list, or dict keyed by user) as a list in user order."""
    if isinstance(values, dict):
        return [values[user] for user in sorted(values)]
    return list(values)


def _single(targets, what, path):
    items = []
    for user, target in enumerate(targets):
        if len(target) != 1:
            raise ValueError(f"{path}: user {user} has {len(target)} {what} targets")
        items.append(int(target[0]))
    return items


def load_data(model, reference_dir, data_file=None):
    """The reference's data for ``model`` as :class:`ReferenceData`.

    ``data_file`` overrides :func:`default_data_file`. ``n_items`` is the row
    count of the reference's item table: its ``item_num`` (the length of the
    file's ``smap``, or for the ADRec file, which has none, its largest id)
    plus the padding row.
    """
    path = Path(data_file) if data_file else default_data_file(model, reference_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: pass data_file= (DiffuRec's data is "
            f"{ADREC_ML100K} in a checkout of https://github.com/Nemo-1024/ADRec)"
        )
    with open(path, "rb") as handle:
        raw = pickle.load(handle)
    train = [[int(item) for item in items] for items in _per_user(raw["train"])]
    valid = _single(_per_user(raw["val"]), "validation", path)
    test = _single(_per_user(raw["test"]), "test", path)
    largest = max(max(max(items) for items in train), max(valid), max(test))
    item_num = len(raw["smap"]) if "smap" in raw else largest
    if largest > item_num:
        raise ValueError(f"{path}: item id {largest} beyond its {item_num} items")
    try:
        source = str(path.resolve().relative_to(Path(reference_dir).resolve()))
    except ValueError:
        source = str(ADREC_ML100K) if model == "DiffuRec" else str(path)
    return ReferenceData(
        name=_NAMES[model][0],
        train=train,
        valid=valid,
        test=test,
        n_items=item_num + 1,
        source=source,
    )


def reference_pickle(data):
    """``data`` in the references' pickle layout: per-user dicts and ``smap``.

    Users are keyed 0..n-1 in order (as in DiffuRecSys's files, so its
    training rows come in the same order); ``smap`` maps each of the
    ``n_items - 1`` ids to itself, as the references only take its length.
    """
    users = range(data.n_users)
    return {
        "train": {user: list(data.train[user]) for user in users},
        "val": {user: [data.valid[user]] for user in users},
        "test": {user: [data.test[user]] for user in users},
        "umap": {user + 1: user for user in users},
        "smap": {item: item for item in range(1, data.n_items)},
    }


def our_overrides(model, settings):
    """Our model's RecBole settings matching the reference's ``settings``."""
    epochs = settings["epochs"]
    milestones = list(range(settings["decay_step"], epochs, settings["decay_step"]))
    overrides = {
        "MAX_ITEM_LIST_LENGTH": settings["max_len"],
        "hidden_size": settings["hidden_size"],
        "n_layers": settings["num_blocks"],
        "n_heads": 4,  # fixed in both references
        "hidden_dropout_prob": settings["dropout"],
        "attn_dropout_prob": settings["dropout"],
        "emb_dropout_prob": settings["emb_dropout"],
        "layer_norm_eps": 1e-12,
        "diffusion_steps": settings["diffusion_steps"],
        "noise_schedule": settings["noise_schedule"],
        "lambda_uncertainty": settings["lambda_uncertainty"],
        "conditioning": settings.get(
            "conditioning", "sum" if model == "DiffuRec" else "cross_attention"
        ),
        "offset_noise": 0.0,  # off in both references
        "ensemble_size": 1,
        "inference_steps": None,  # the whole chain of T steps
        "loss_type": "CE",
        "learning_rate": settings["lr"],
        "weight_decay": settings["weight_decay"],
        "train_batch_size": settings["batch_size"],
        "epochs": epochs,
        "lr_scheduler": "step" if milestones else "none",
        "lr_milestones": milestones or [settings["decay_step"]],
        "lr_gamma": settings["gamma"],
    }
    if settings["schedule_sampler_name"] not in ("lossaware", "uniform"):
        raise ValueError(
            f"schedule_sampler_name={settings['schedule_sampler_name']!r}: ours "
            "draws steps uniformly, which only 'lossaware' (never updated in "
            "the reference) and 'uniform' do"
        )
    return overrides


def run_reference(
    model,
    reference_dir,
    settings,
    seed,
    work_dir,
    log_path,
    data_file=None,
    timeout=None,
):
    """Train the reference in a child process; return its curve and test metrics.

    The data (:func:`load_data`) are written to ``work_dir`` in the reference's
    layout; the child runs there. Raises RuntimeError with the log's tail if
    the child fails.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: one of {', '.join(MODELS)}")
    missing = sorted(set(SETTINGS[model]) - set(settings))
    if missing:
        raise ValueError(f"settings lack {', '.join(missing)}")
    data = load_data(model, reference_dir, data_file=data_file)
    work_dir = Path(work_dir).resolve()
    run_dir = work_dir / "run"
    if model == "DiffuRec":  # its main reads ../datasets/data/<dataset>/dataset.pkl
        data_path = work_dir / "datasets" / "data" / _NAMES[model][1] / "dataset.pkl"
    else:  # its main reads datasetB.pkl from the working directory
        data_path = run_dir / DIFFURECSYS_BEAUTY
    data_path.parent.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(data_path, "wb") as handle:
        pickle.dump(reference_pickle(data), handle)
    spec = {
        "model": model,
        "reference_dir": str(Path(reference_dir).resolve()),
        "settings": dict(settings),
        "seed": int(seed),
        "run_dir": str(run_dir),
        "dataset": _NAMES[model][1],
        "data_file": str(data_path),
    }
    return run_child(
        "benchmarks.parity.train_diffurec", spec, work_dir, log_path, timeout=timeout
    )


# ---------------------------------------------------------------------- #
# the child
# ---------------------------------------------------------------------- #
class _PhaseLoader:
    """A data loader that calls ``enter()`` whenever a pass over it begins."""

    def __init__(self, loader, enter):
        self.loader = loader
        self.enter = enter

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        self.enter()
        return iter(self.loader)


def phase_loaders(recorder, train, valid, test):
    """``model_train``'s three loaders, each telling ``recorder`` its phase.

    A pass over ``train`` starts epoch 0, 1, ...; a pass over ``valid``
    validates the epoch just trained; a pass over ``test`` is the test.
    """
    epoch = [-1]

    def training():
        epoch[0] += 1
        recorder.enter(("train", epoch[0]))

    def validation():
        recorder.enter(("valid", epoch[0]))

    def testing():
        recorder.enter(("test", None))

    return (
        _PhaseLoader(train, training),
        _PhaseLoader(valid, validation),
        _PhaseLoader(test, testing),
    )


def _validate_every_epoch(trainer):
    """Re-run ``trainer``'s source without the guard that skips epoch 0."""
    path = Path(trainer.__file__)
    source = path.read_text(encoding="utf-8")
    if source.count(_FIRST_EPOCH_GUARD) != 1:
        raise RuntimeError(f"{path}: expected its validation guard once")
    code = compile(source.replace(_FIRST_EPOCH_GUARD, ""), str(path), "exec")
    exec(code, trainer.__dict__)  # the reference's own code, minus the guard


def _argv(settings, seed, dataset):
    """DiffuRec's command line for ``settings`` (parsed by its main.py)."""
    epochs = settings["epochs"]
    options = dict(settings)
    options.update(
        dataset=dataset,
        device="cpu",
        random_seed=seed,
        eval_interval=1,
        patience=epochs + 1,
        log_file="log/",
        num_gpu=1,
    )
    argv = ["main.py"]
    for key, value in options.items():
        argv += [f"--{key}", str(value)]
    return argv


def _run_diffurecsys(main, spec):
    """main()'s statements of DiffuRecSys up to ``model_train``, in its order."""
    settings = spec["settings"]
    args = main.args
    for key, value in settings.items():
        setattr(args, key, value)
    for key, value in {
        "device": "cpu",
        "num_gpu": 1,
        "random_seed": spec["seed"],
        "eval_interval": 1,
        "patience": settings["epochs"] + 1,
        "long_head": False,
        "diversity_measure": False,
    }.items():
        setattr(args, key, value)
    main.fix_random_seed_as(args.random_seed)
    with open(DIFFURECSYS_BEAUTY, "rb") as handle:
        data_raw = pickle.load(handle)
    args = main.item_num_create(args, len(data_raw["smap"]))
    loaders = (
        main.Data_Train(data_raw["train"], args).get_pytorch_dataloaders(),
        main.Data_Val(
            data_raw["train"], data_raw["val"], args
        ).get_pytorch_dataloaders(),
        main.Data_Test(
            data_raw["train"], data_raw["val"], data_raw["test"], args
        ).get_pytorch_dataloaders(),
    )
    network = main.Att_Diffuse_model(main.create_model_diffu(args), args)
    return main.model_train(*loaders, network, args, main.logger)


def _child(spec):
    import torch

    from benchmarks.parity.reference import import_reference

    torch.set_num_threads(1)
    os.environ.setdefault("MPLBACKEND", "Agg")  # DiffuRecSys's main imports pyplot
    model, settings = spec["model"], spec["settings"]
    os.chdir(spec["run_dir"])
    if model == "DiffuRec":  # its main.py parses the command line at import
        sys.argv = _argv(settings, spec["seed"], spec["dataset"])
    modules = import_reference(model, spec["reference_dir"], _MODULES[model])
    trainer, main = modules[_TRAINER[model]], modules["main"]
    _validate_every_epoch(trainer)

    recorder = MetricRecorder()
    kept = []

    def deepcopy(value, memo=None):
        kept.append(recorder.phase)
        return copy.deepcopy(value, memo)

    trainer.hrs_and_ndcgs_k = recorder.wrap_metrics(trainer.hrs_and_ndcgs_k)
    trainer.copy = types.SimpleNamespace(deepcopy=deepcopy)
    model_train = trainer.model_train
    returned = {}

    def recorded_model_train(train, valid, test, *rest):
        outputs = model_train(*phase_loaders(recorder, train, valid, test), *rest)
        returned["test"] = outputs[1]  # its test metrics, percent
        return outputs

    main.model_train = recorded_model_train
    if model == "DiffuRec":
        main.main(main.args)
    else:
        _run_diffurecsys(main, spec)

    result = recorder.result(settings["epochs"])
    kept_epochs = [epoch for kind, epoch in kept if kind == "valid"]
    if kept_epochs and kept_epochs[-1] != result["best_epoch"]:
        print(
            f"note: kept the model of epoch {kept_epochs[-1]}, the any-metric "
            f"rule gives {result['best_epoch']}",
            flush=True,
        )
    result["best_epoch"] = kept_epochs[-1] if kept_epochs else result["best_epoch"]
    result["valid_curve_reported"] = [
        [epoch, round(_batch_mean(batches, "NDCG@10"), 6)]
        for (kind, epoch), batches in sorted(recorder.reported.items())
        if kind == "valid"
    ]
    result["test_reported"] = {
        key.lower().replace("hr@", "hit@"): value / 100
        for key, value in returned.get("test", {}).items()
    }
    return result


def _batch_mean(batches, key):
    return sum(batch[key] for batch in batches) / len(batches)


if __name__ == "__main__":
    child_main(_child, __doc__.splitlines()[0])
