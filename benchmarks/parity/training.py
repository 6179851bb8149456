"""Training parity: ours and the reference code trained side by side.

    python -m benchmarks.parity.training --model=ADRec --reference-dir=/tmp/refs/ADRec
    python -m benchmarks.parity.training --model=CDDRec --reference-dir=/tmp/refs/CDDRec --seeds=2020,2021

For each seed, the reference code trains on its own data in a child process
(the model's recipe, ``benchmarks/parity/train_<family>.py``), and ours trains
on the same data, converted to RecBole atomic files with the same
leave-one-out split (:mod:`benchmarks.parity.training_data`), with the same
hyperparameters and the same epoch budget, validating after every epoch and
never stopping early (the ADRec reference skips its validation after epoch
0). Ours ranks every item but the padding id, the user's history included
(RecBole masks no history item for sequential models), as the references of
DiffuRec, DiffuRecSys and ADRec do; the CDDRec reference sets the scores of
the history to 0 by default (its recipe can switch that off). Each run appends a record (``kind:
training``, ``side``, ``seed``, ``valid_curve``, ``test``) to
``benchmarks/results/raw/parity.jsonl``; a rerun skips the runs the file
already holds for the same settings, so an interrupted comparison continues.
``python -m benchmarks.parity.render`` puts the curves and means on the page.
"""

import argparse
import hashlib
import importlib
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.parity.reference import REFERENCES, checkout_commit  # noqa: E402
from benchmarks.parity.training_data import (  # noqa: E402
    recbole_split_config,
    write_atomic,
)
from benchmarks.parity.training_metrics import RESULT_PREFIX, run_child  # noqa: E402
from benchmarks.raw import append_raw, now_iso  # noqa: E402

__all__ = [
    "RECIPES",
    "existing_runs",
    "main",
    "our_config",
    "recipe",
    "run_training_parity",
    "settings_fingerprint",
]

RECIPES = {
    "ADRec": "benchmarks.parity.train_adrec",
    "DiffuRec": "benchmarks.parity.train_diffurec",
    "DiffuRecSys": "benchmarks.parity.train_diffurec",
    "CDDRec": "benchmarks.parity.train_cddrec",
}
SIDES = ("reference", "ours")
_BENCH = Path(__file__).resolve().parents[1]
DEFAULT_RAW = _BENCH / "results" / "raw" / "parity.jsonl"
DEFAULT_WORK = _BENCH / "work" / "parity"


def recipe(model):
    """The recipe module of ``model`` (data, settings, reference runner)."""
    if model not in RECIPES:
        raise ValueError(
            f"no training parity for {model!r}: choose from {sorted(RECIPES)}"
        )
    return importlib.import_module(RECIPES[model])


def settings_fingerprint(model, settings):
    """Short hash of a run's settings: a changed budget is a new comparison."""
    payload = json.dumps({"model": model, "settings": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def parse_options(pairs):
    """``["key=value", ...]`` -> dict, values read as YAML scalars (true, 0.1, ...)."""
    import yaml

    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{pair!r}: write KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    return options


def existing_runs(raw_path, model, fingerprint, variant=None):
    """``{(side, seed)}`` of the training records already in ``raw_path``."""
    path = Path(raw_path)
    if not path.is_file():
        return set()
    done = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if (
            record.get("kind") == "training"
            and record.get("model") == model
            and record.get("fingerprint") == fingerprint
            and record.get("variant") == variant
        ):
            done.add((record["side"], record["seed"]))
    return done


def our_config(model, settings, data_name, data_path, seed, checkpoint_dir):
    """RecBole settings of our side: the recipe's, the split, no early stopping."""
    module = recipe(model)
    config = recbole_split_config()
    config.update(module.our_overrides(model, settings))
    epochs = int(config["epochs"])
    config.update(
        {
            "data_path": str(data_path),
            "seed": seed,
            "reproducibility": True,
            "eval_step": 1,
            "stopping_step": epochs + 1,  # the whole budget runs
            "metrics": ["Hit", "NDCG"],
            "topk": [5, 10, 20],
            "valid_metric": "NDCG@10",
            "metric_decimal_place": 6,  # RecBole rounds to 4 by default
            "checkpoint_dir": str(checkpoint_dir),
            "show_progress": False,
            "log_wandb": False,
            "worker": 0,
        }
    )
    return config


def _parity_trainer_class(trainer_class):
    """``trainer_class`` that records the validation curve and training time.

    RecBole's full-sort evaluation of sequential models masks no history
    item (its loader passes no history index), as the reference codes do,
    so the evaluation itself needs no change."""

    class ParityTrainer(trainer_class):
        parity_epoch = -1
        parity_valid_curve = None
        parity_train_seconds = 0.0

        def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
            self.parity_epoch += 1  # over all stages, as the reference counts
            start = time.perf_counter()
            result = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
            self.parity_train_seconds += time.perf_counter() - start
            return result

        def _valid_epoch(self, valid_data, *args, **kwargs):
            score, result = super()._valid_epoch(valid_data, *args, **kwargs)
            if self.parity_valid_curve is None:
                self.parity_valid_curve = []
            self.parity_valid_curve.append([self.parity_epoch, round(float(score), 6)])
            return score, result

    ParityTrainer.__name__ = trainer_class.__name__
    return ParityTrainer


def _reordered_embedding(source, dataset, item_field, path):
    """The reference's [n_items, H] embedding in RecBole's item-id order."""
    import torch

    weights = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(weights, dict):
        weights = weights["item_embedding.weight"]
    tokens = dataset.field2id_token[item_field]
    order = [0] + [int(token) for token in tokens[1:]]  # id 0 is padding
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights[order].clone(), path)
    return str(path)


def _ours_child(spec):
    """Our side of one run (in its own process): train, validate, test."""
    import torch

    from benchmarks.environment import build_with_stats
    from recbole_diffusion.registry import get_trainer

    torch.set_num_threads(1)
    model_name = spec["model"]
    pieces, stats = build_with_stats(model_name, spec["dataset"], spec["config"])
    config, dataset, train_data, valid_data, test_data, model = pieces
    if spec.get("pretrained_embedding"):
        config["pretrained_embedding"] = _reordered_embedding(
            spec["pretrained_embedding"],
            dataset,
            config["ITEM_ID_FIELD"],
            Path(spec["config"]["checkpoint_dir"]) / "reference-embedding.pt",
        )
    trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
    trainer = _parity_trainer_class(trainer_class)(config, model)
    start = time.perf_counter()
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    wall = time.perf_counter() - start
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    # RecBole keeps a later epoch on a tie (it saves on >=): the last maximum
    curve = trainer.parity_valid_curve or []
    best_epoch = max(reversed(curve), key=lambda e: e[1])[0] if curve else None
    return {
        "valid_curve": trainer.parity_valid_curve or [],
        "test": {str(k): round(float(v), 6) for k, v in test.items()},
        "train_seconds": round(trainer.parity_train_seconds, 2),
        "epochs_trained": trainer.parity_epoch + 1,
        "best_epoch": best_epoch,
        "wall_seconds": round(wall, 2),
        "dataset_stats": stats,
    }


def run_training_parity(
    model,
    reference_dir,
    seeds=(2020, 2021),
    sides=SIDES,
    work_dir=DEFAULT_WORK,
    raw_path=DEFAULT_RAW,
    settings=None,
    variant=None,
    options=None,
):
    """Train both sides for each seed; append a record per finished run.

    ``variant`` names a run of changed ``options`` (settings keys, e.g. a
    reference switch such as ``linear_infonce``); its records are shown
    beside the main comparison, not in place of it.
    """
    module = recipe(model)
    settings = dict(settings or module.SETTINGS[model])
    unknown = sorted(
        set(options or {}) - set(settings) - set(getattr(module, "OPTIONS", ()))
    )
    if unknown:
        raise ValueError(
            f"{model}: unknown setting(s) {unknown}; known: {sorted(settings)}"
        )
    settings.update(options or {})
    fingerprint = settings_fingerprint(model, settings)
    done = existing_runs(raw_path, model, fingerprint, variant)
    reference_dir = Path(reference_dir)
    data = module.load_data(model, reference_dir)
    work = Path(work_dir) / model
    data_path = write_atomic(data, work / "data", keep_last=module.KEEP_LAST[model])
    data_info = {
        "name": data.name,
        "source": data.source,
        "users": data.n_users,
        "items": data.n_items - 1,
        "interactions": data.n_interactions,
        "keep_last": module.KEEP_LAST[model],
    }
    commit = checkout_commit(reference_dir)
    records = []
    for seed in seeds:
        for side in sides:
            if (side, seed) in done:
                print(f"{model} {side} seed {seed}: already recorded, skipped")
                continue
            label = f"{variant}-" if variant else ""
            run_dir = work / f"{label}{side}-seed{seed}"
            log_path = work / f"{label}{side}-seed{seed}.log"
            print(f"{model} {side} seed {seed} ... (log: {log_path})", flush=True)
            started = now_iso()
            if side == "reference":
                result = module.run_reference(
                    model, reference_dir, settings, seed, run_dir, log_path
                )
            else:
                config = our_config(
                    model, settings, data.name, data_path, seed, run_dir / "checkpoints"
                )
                spec = {"model": model, "dataset": data.name, "config": config}
                embedding = getattr(module, "pretrained_embedding", None)
                if embedding is not None:
                    spec["pretrained_embedding"] = str(embedding(model, reference_dir))
                result = run_child(
                    "benchmarks.parity.training", spec, run_dir, log_path
                )
            record = {
                "kind": "training",
                "model": model,
                "side": side,
                "seed": seed,
                "variant": variant,
                "options": dict(options or {}),
                "fingerprint": fingerprint,
                "settings": settings,
                "data": data_info,
                "protocol": list(module.PROTOCOL[model]),
                "reference_commit": commit,
                "expected_commit": REFERENCES[model].commit,
                "started_at": started,
                "finished_at": now_iso(),
                **result,
            }
            append_raw(raw_path, record)
            records.append(record)
            ndcg = record["test"].get("ndcg@10")
            print(
                f"  test NDCG@10 {ndcg}, {record['train_seconds']} s training",
                flush=True,
            )
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.parity.training",
        description="Train ours and the reference code side by side on the reference's data.",
    )
    parser.add_argument("--model", choices=sorted(RECIPES))
    parser.add_argument(
        "--reference-dir", help="checkout of the reference at its pinned commit"
    )
    parser.add_argument("--seeds", default="2020,2021", help="comma-separated seeds")
    parser.add_argument(
        "--sides", default=",".join(SIDES), help="reference,ours or one of them"
    )
    parser.add_argument(
        "--variant",
        help="label of a run with changed settings (shown beside the main one)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change one setting of the recipe (with --variant)",
    )
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK))
    parser.add_argument("--raw", default=str(DEFAULT_RAW))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        with open(options.child, encoding="utf-8") as handle:
            spec = json.load(handle)
        print(RESULT_PREFIX + json.dumps(_ours_child(spec)), flush=True)
        return 0
    if not options.model or not options.reference_dir:
        parser.error("--model and --reference-dir are required")
    try:
        seeds = [int(seed) for seed in options.seeds.split(",") if seed.strip()]
    except ValueError:
        parser.error(f"--seeds={options.seeds!r}: give integers separated by commas")
    sides = [side.strip() for side in options.sides.split(",") if side.strip()]
    unknown = [side for side in sides if side not in SIDES]
    if unknown:
        parser.error(f"--sides: unknown {unknown}; choose from {list(SIDES)}")
    try:
        changed = parse_options(options.set)
    except ValueError as error:
        parser.error(f"--set {error}")
    if changed and not options.variant:
        parser.error("--set needs --variant (a label for the changed runs)")
    run_training_parity(
        options.model,
        options.reference_dir,
        seeds=seeds,
        sides=sides,
        work_dir=options.work_dir,
        raw_path=options.raw,
        variant=options.variant,
        options=changed,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
