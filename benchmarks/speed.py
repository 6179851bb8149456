"""Speed mode: training and inference throughput without full training.

For each (dataset, model), in a child process of its own: training steps per
second (``warmup_steps`` untimed, then ``train_steps`` timed, on real batches
of the training loader: forward, ``calculate_loss``, backward, optimizer
step) and full-sort users per second on the first ``max_users`` test users.
For the models with an ``inference_steps`` parameter, the same throughput at
each number of reverse steps, and the test NDCG@10 at that number of steps
when a model trained under the same protocol is in the raw results file.

The renderer reports every number as a ratio to SASRec measured in the same
run (``run_id``), on the machine the records name.
"""

import time
import traceback
from pathlib import Path

from benchmarks.environment import library_versions, machine_info, sync, to_plain
from benchmarks.harness import (
    DEFAULT_WORK_DIR,
    _relative,
    full_sort_throughput,
    harness_config,
    run_child,
)
from benchmarks.protocol import fingerprint, unit_overrides
from benchmarks.raw import (
    DEFAULT_RESULTS_DIR,
    OK,
    SCHEMA_VERSION,
    append_raw,
    latest_records,
    now_iso,
    raw_path,
    read_raw,
)

__all__ = [
    "INFERENCE_STEPS",
    "execute_speed",
    "run_speed",
    "speed_raw_path",
    "train_step",
]

INFERENCE_STEPS = (32, 16, 8, 4)
REFERENCE_MODEL = "SASRec"


def speed_raw_path(results_dir):
    return Path(results_dir) / "raw" / "speed.jsonl"


def train_step(model, optimizer, interaction):
    """One training step as the trainer runs it: loss (a tuple is summed),
    backward, optimizer step."""
    optimizer.zero_grad()
    loss = model.calculate_loss(interaction)
    if isinstance(loss, tuple):
        loss = sum(loss)
    loss.backward()
    optimizer.step()


def _train_steps_per_second(model, optimizer, train_data, device, warmup, steps):
    model.train()
    done = 0
    start = None
    while done < warmup + steps:
        for interaction in train_data:
            if done == warmup:
                sync(device)
                start = time.perf_counter()
            train_step(model, optimizer, interaction.to(device))
            done += 1
            if done == warmup + steps:
                break
    sync(device)
    return steps / (time.perf_counter() - start)


def execute_speed(spec):
    """Measure one (dataset, model); return its record (never raises)."""
    record = {
        "schema": SCHEMA_VERSION,
        "kind": "speed",
        "run_id": spec["run_id"],
        "dataset": spec["dataset"],
        "protocol": spec["protocol"],
        "model": spec["model"],
        "overrides": spec["overrides"],
        "fingerprint": spec["fingerprint"],
        "train_steps": spec["train_steps"],
        "warmup_steps": spec["warmup_steps"],
        "status": None,
        "error": None,
        "started_at": now_iso(),
    }
    try:
        import torch

        from recbole_diffusion.quick_start import build_pipeline
        from recbole_diffusion.registry import get_model, get_trainer
        from recbole_diffusion.trainer import load_checkpoint

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        record["versions"] = library_versions()
        config, _, train_data, _, test_data, model = build_pipeline(
            model=spec["model"],
            dataset=spec["dataset"],
            config_dict=harness_config(spec),
        )
        device = config["device"]
        record["machine"] = machine_info(device)
        record["config"] = to_plain(config.final_config_dict)
        record["params"] = int(sum(p.numel() for p in model.parameters()))
        record["train_batch_size"] = config["train_batch_size"]
        record["max_item_list_length"] = config["MAX_ITEM_LIST_LENGTH"]
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        record["train_steps_per_second"] = _train_steps_per_second(
            model,
            trainer.optimizer,
            train_data,
            device,
            spec["warmup_steps"],
            spec["train_steps"],
        )
        record["users_per_second"], record["users_measured"] = full_sort_throughput(
            model, test_data, device, spec["max_users"]
        )
        model_class = get_model(config["model"])
        if getattr(model_class, "trim_padding", False):
            # The same steps with every batch left at MAX_ITEM_LIST_LENGTH: what
            # trimming padding before the Transformer saves.
            untrimmed = model_class(config, train_data._dataset).to(device)
            untrimmed.trim_padding = False
            optimizer = torch.optim.Adam(
                untrimmed.parameters(), lr=config["learning_rate"]
            )
            record["train_steps_per_second_untrimmed"] = _train_steps_per_second(
                untrimmed,
                optimizer,
                train_data,
                device,
                spec["warmup_steps"],
                spec["train_steps"],
            )
            record["train_batches_per_epoch"] = len(train_data)
        if config["inference_cache"]:
            # The last-token path that recomputes the whole sequence at every
            # reverse step, against the cached keys and values measured above.
            config["inference_cache"] = False
            uncached = model_class(config, train_data._dataset).to(device)
            uncached.load_state_dict(model.state_dict())
            record["users_per_second_uncached"], _ = full_sort_throughput(
                uncached, test_data, device, spec["max_users"]
            )
            config["inference_cache"] = True
        steps_rows = []
        has_steps = "inference_steps" in config and config["diffusion_steps"]
        if has_steps and spec.get("inference_steps"):
            trained = spec.get("trained_model_file")
            state = load_checkpoint(trained)["state_dict"] if trained else None
            if state is None:
                state = model.state_dict()
            for steps in spec["inference_steps"]:
                if steps > config["diffusion_steps"]:
                    continue
                config["inference_steps"] = steps
                stepped = model_class(config, train_data._dataset).to(device)
                stepped.load_state_dict(state)
                users_per_second, users = full_sort_throughput(
                    stepped, test_data, device, spec["max_users"]
                )
                row = {
                    "inference_steps": steps,
                    "users_per_second": users_per_second,
                    "users_measured": users,
                    "ndcg@10": None,
                }
                if trained:
                    trainer.model = stepped
                    result = trainer.evaluate(
                        test_data, load_best_model=False, show_progress=False
                    )
                    row["ndcg@10"] = float(result["ndcg@10"])
                steps_rows.append(row)
            record["trained_model_file"] = trained
            record["trained_seed"] = spec.get("trained_seed")
        record["inference"] = steps_rows
        record["status"] = OK
    except Exception as error:  # recorded, not raised
        traceback.print_exc()
        record["status"] = "failed"
        record["error"] = f"{type(error).__name__}: {error}"
    record["finished_at"] = now_iso()
    return record


def _trained_checkpoint(results_dir, dataset, protocol, model, stamp):
    """A checkpoint of ``model`` trained under the same protocol parameters."""
    records = read_raw(raw_path(results_dir, dataset, protocol["name"]))
    for (name, seed), record in sorted(latest_records(records).items()):
        if name != model or record.get("status") != OK:
            continue
        model_file = record.get("model_file")
        if (
            record.get("fingerprint") == stamp
            and model_file
            and Path(model_file).is_file()
        ):
            return model_file, seed
    return None, None


def run_speed(
    datasets,
    models,
    protocol,
    results_dir=DEFAULT_RESULTS_DIR,
    work_dir=DEFAULT_WORK_DIR,
    data_path=None,
    train_steps=20,
    warmup_steps=3,
    max_users=1024,
    inference_steps=INFERENCE_STEPS,
    threads=None,
    unit_timeout=None,
    echo=print,
):
    """Measure every (dataset, model), SASRec first; return the run id."""
    models = [REFERENCE_MODEL] + [m for m in models if m != REFERENCE_MODEL]
    run_id = time.strftime("%Y%m%d-%H%M%S")
    path = speed_raw_path(results_dir)
    threads = threads if threads is not None else protocol.get("threads")
    work_dir = Path(work_dir)
    for dataset in datasets:
        for model in models:
            overrides = unit_overrides(protocol, dataset, model)
            stamp = fingerprint(overrides)
            trained, trained_seed = _trained_checkpoint(
                results_dir, dataset, protocol, model, stamp
            )
            spec = {
                "run_id": run_id,
                "dataset": dataset,
                "protocol": protocol["name"],
                "model": model,
                "overrides": overrides,
                "fingerprint": stamp,
                "seed": protocol["seeds"][0],
                "checkpoint_dir": str((work_dir / "checkpoints" / "speed").resolve()),
                "data_path": data_path,
                "threads": threads,
                "train_steps": train_steps,
                "warmup_steps": warmup_steps,
                "max_users": max_users,
                "inference_steps": list(inference_steps),
                "trained_model_file": trained,
                "trained_seed": trained_seed,
            }
            log_path = work_dir / "logs" / f"speed.{run_id}.{dataset}.{model}.log"
            echo(f"speed {dataset} {model} (log: {_relative(log_path)})")
            start = time.perf_counter()
            result, code, error = run_child(
                "speed", spec, log_path, work_dir, unit_timeout
            )
            if result is None:
                result = {
                    "schema": SCHEMA_VERSION,
                    "kind": "speed",
                    "run_id": run_id,
                    "dataset": dataset,
                    "protocol": protocol["name"],
                    "model": model,
                    "status": "timeout" if code is None else "crashed",
                    "error": error,
                }
            result["wall_seconds"] = time.perf_counter() - start
            result["log"] = _relative(log_path)
            append_raw(path, result)
            if result["status"] == OK:
                echo(
                    f"    {result['train_steps_per_second']:.2f} steps/s, "
                    f"{result['users_per_second']:.1f} users/s"
                )
            else:
                echo(f"    {result['status']}: {str(result.get('error'))[:300]}")
    return run_id
