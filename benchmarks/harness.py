"""One benchmark unit: its run in a child process, and the parent's launch of it.

A *unit* is one (dataset, protocol, model, seed). The runner (``run.py``)
starts every unit in a child process of its own, so peak memory is measured
per unit and a crash ends that unit only, then appends the unit's record to
``results/raw/<dataset>.<protocol>.jsonl`` as soon as the child returns. A
rerun skips the units that the raw file already holds, so a long table is
built over several runs. Protocols are read by ``benchmarks.protocol``, the
raw file by ``benchmarks.raw``.
"""

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

from benchmarks.environment import (
    build_with_stats,
    library_versions,
    machine_info,
    peak_memory,
    sync,
    to_plain,
)
from benchmarks.protocol import BENCH_DIR, PROJECT_ROOT
from benchmarks.raw import DIVERGED, FAILED, OK, SCHEMA_VERSION, now_iso

__all__ = [
    "DEFAULT_WORK_DIR",
    "execute_unit",
    "full_sort_throughput",
    "harness_config",
    "run_child",
    "timed_trainer_class",
    "unit_stop_reason",
]

DEFAULT_WORK_DIR = BENCH_DIR / "work"


# --------------------------------------------------------------------------- #
# one unit (runs in the child process)
# --------------------------------------------------------------------------- #
def timed_trainer_class(trainer_class):
    """``trainer_class`` that records epoch times, validation scores and saves."""

    from benchmarks.unit_state import ResumableTrainerMixin

    class BenchmarkTrainer(ResumableTrainerMixin, trainer_class):
        def __init__(self, config, model):
            super().__init__(config, model)
            self.bench_epoch_seconds = []
            self.bench_valid_curve = []
            self.bench_saved_epochs = []
            self.bench_epoch = None

        def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
            self.bench_epoch = epoch_idx
            start = time.perf_counter()
            result = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
            sync(self.device)
            self.bench_epoch_seconds.append(time.perf_counter() - start)
            return result

        def _valid_epoch(self, valid_data, *args, **kwargs):
            valid_score, valid_result = super()._valid_epoch(
                valid_data, *args, **kwargs
            )
            entry = [self.bench_epoch, float(valid_score)]
            # multi-stage trainers (ADRec) restart epochs at each stage
            if getattr(self, "stage", None) is not None:
                entry.append(self.stage)
            self.bench_valid_curve.append(entry)
            return valid_score, valid_result

        def _save_checkpoint(self, epoch, *args, **kwargs):
            target = kwargs.get("saved_model_file", self.saved_model_file)
            super()._save_checkpoint(epoch, *args, **kwargs)
            stage = getattr(self, "stage", None)
            self.bench_saved_epochs.append((epoch, stage, target))

        def bench_best_epoch(self):
            """(epoch, stage) of the checkpoint that ``evaluate`` loads."""
            saves = [s for s in self.bench_saved_epochs if s[0] >= 0]
            # by file name: a resumed unit's files may have moved folders
            final_name = os.path.basename(self.saved_model_file)
            final = [s for s in saves if os.path.basename(s[2]) == final_name]
            chosen = (final or saves or [(None, None, None)])[-1]
            return chosen[0], chosen[1]

    BenchmarkTrainer.__name__ = trainer_class.__name__
    BenchmarkTrainer.__qualname__ = trainer_class.__qualname__
    return BenchmarkTrainer


def full_sort_throughput(model, eval_data, device, max_users=None):
    """Users per second of ``full_sort_predict`` over ``eval_data`` (in order).

    One small untimed batch first, so one-off allocations are not counted.
    A pass is the first ``max_users`` users (all, if None); passes repeat
    (at most 5) until 2 s have elapsed. Returns (users/s, users of one pass).
    """
    import torch

    model.eval()
    users = 0
    with torch.no_grad():
        for batched in eval_data:
            warm_up = batched[0][: min(16, len(batched[0]))]
            model.full_sort_predict(warm_up.to(device))
            break
        sync(device)
        start = time.perf_counter()
        elapsed = 0.0
        # fast models: repeat the pass (up to 5 times, until 2 s) to average noise
        for _ in range(5):
            pass_users = 0
            for batched in eval_data:
                interaction = batched[0]
                if max_users:
                    # cut the last batch, so a pass is max_users, not a whole batch
                    interaction = interaction[: max_users - pass_users]
                interaction = interaction.to(device)
                model.full_sort_predict(interaction)
                pass_users += len(interaction)
                if max_users and pass_users >= max_users:
                    break
            users += pass_users
            sync(device)
            elapsed = time.perf_counter() - start
            if elapsed >= 2.0:
                break
    return (users / elapsed if elapsed > 0 else None), pass_users


def harness_config(spec):
    """Parameters the harness itself sets on top of the protocol's."""
    config_dict = dict(spec["overrides"])
    config_dict.update(
        {
            "seed": spec["seed"],
            "reproducibility": True,
            "checkpoint_dir": spec["checkpoint_dir"],
            "show_progress": False,
            "log_wandb": False,
        }
    )
    if spec.get("data_path"):
        config_dict["data_path"] = spec["data_path"]
    return config_dict


def _plain_metrics(result):
    return {str(k): float(v) for k, v in (result or {}).items()}


def _any_nan(metrics):
    return any(v != v for v in metrics.values())


def execute_unit(spec):
    """Train, validate and test one unit; return its record (never raises).

    ``spec`` holds dataset, protocol, model, seed, seed_index, overrides,
    fingerprint, checkpoint_dir, and optionally data_path and threads.
    """
    record = {
        "schema": SCHEMA_VERSION,
        "kind": "unit",
        "dataset": spec["dataset"],
        "protocol": spec["protocol"],
        "protocol_description": spec.get("protocol_description", ""),
        "model": spec["model"],
        "seed": spec["seed"],
        "seed_index": spec["seed_index"],
        "overrides": spec["overrides"],
        "protocol_common": spec.get("protocol_common"),
        "fingerprint": spec["fingerprint"],
        "status": None,
        "error": None,
        "started_at": now_iso(),
    }
    device = None
    trainer = None
    try:
        import torch

        from recbole_diffusion.registry import get_trainer
        from recbole_diffusion.trainer import TrainingDivergedError

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        record["versions"] = library_versions()
        try:
            pieces, stats = build_with_stats(
                spec["model"], spec["dataset"], harness_config(spec)
            )
            config, _, train_data, valid_data, test_data, model = pieces
            device = config["device"]
            record["machine"] = machine_info(device)
            record["config"] = to_plain(config.final_config_dict)
            record["dataset_stats"] = stats
            record["params"] = int(sum(p.numel() for p in model.parameters()))
            record["train_rows"] = len(train_data.dataset)
            trainer_class = get_trainer(config["MODEL_TYPE"], config["model"])
            trainer = timed_trainer_class(trainer_class)(config, model)
            _resume_if_interrupted(
                trainer, spec, record, train_data, valid_data, test_data
            )

            trainer.bench_clock = time.perf_counter()
            trainer.fit(
                train_data,
                valid_data,
                saved=True,
                show_progress=False,
                callback_fn=trainer.bench_epoch_end,
            )
            sync(device)
            record["train_seconds"] = trainer.bench_prior_seconds + (
                time.perf_counter() - trainer.bench_clock
            )
            # the test metrics of the checkpoint that validation chose
            test_result = trainer.evaluate(
                test_data, load_best_model=True, show_progress=False
            )
            record["metrics"] = _plain_metrics(test_result)
            record["valid_metrics"] = _plain_metrics(trainer.best_valid_result)
            record["model_file"] = trainer.saved_model_file
            users_per_second, users = full_sort_throughput(model, test_data, device)
            record["users_per_second"] = users_per_second
            record["throughput_users"] = users
            by_steps = _score_inference_steps(spec, trainer, model, test_data)
            if by_steps:
                record["test_by_inference_steps"] = by_steps
            if _any_nan(record["metrics"]):
                record["status"] = DIVERGED
                record["error"] = "test metrics are NaN"
            else:
                record["status"] = OK
        except TrainingDivergedError as error:
            record["status"] = DIVERGED
            record["error"] = str(error)
    except Exception as error:  # recorded, not raised: the table lists it
        traceback.print_exc()
        record["status"] = FAILED
        record["error"] = f"{type(error).__name__}: {error}"
    if trainer is not None:
        epochs = trainer.bench_epoch_seconds
        record["epochs_trained"] = len(epochs)
        record["epoch_seconds"] = epochs
        record["seconds_per_epoch"] = sum(epochs) / len(epochs) if epochs else None
        record["valid_curve"] = trainer.bench_valid_curve
        record["best_epoch"], record["best_stage"] = trainer.bench_best_epoch()
        record["stop_reasons"] = dict(trainer.bench_stop_reasons)
        record["stop_reason"] = unit_stop_reason(trainer.bench_stop_reasons)
        if trainer.bench_resumes:
            record["resumed"] = len(trainer.bench_resumes)
            record["resumes"] = trainer.bench_resumes
        if getattr(trainer, "stage_scores", None):  # ADRec's stages
            record["stage_scores"] = {
                str(k): v for k, v in trainer.stage_scores.items()
            }
    try:
        record["peak_memory_mb"], record["peak_memory_kind"] = peak_memory(device)
    except Exception:  # pragma: no cover - memory probing never fails a unit
        record["peak_memory_mb"], record["peak_memory_kind"] = None, None
    record.setdefault("machine", _safe(machine_info))
    record.setdefault("versions", _safe(library_versions))
    record["finished_at"] = now_iso()
    return record


def _resume_if_interrupted(trainer, spec, record, *loaders):
    """Name the unit's files; continue from its resume state if there is one."""
    from benchmarks.unit_state import load_resume_state, unit_file_stem

    checkpoint_dir = Path(spec["checkpoint_dir"])
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    stem = unit_file_stem(spec)
    resume_file = checkpoint_dir / f"{stem}.resume.pth"
    trainer.bench_setup(
        spec,
        list(loaders),
        resume_file,
        spec.get("progress_file"),
        checkpoint_dir / f"{stem}.pth",
    )
    state = load_resume_state(resume_file, spec)
    if state is not None:
        trainer.bench_restore(state)
        print(
            f"resumed after epoch {state['epoch']}"
            + (f" of stage {state['stage']}" if state["stage"] is not None else "")
            + f" ({len(trainer.bench_epoch_seconds)} epochs trained before)",
            flush=True,
        )


def unit_stop_reason(stop_reasons):
    """``early_stopping`` when every early-stopped stage stopped early.

    ADRec's warm-up (stage 2) always runs its fixed number of epochs, so it
    does not count; any other stage that ran out of epochs makes it ``budget``.
    """
    reasons = [r for stage, r in stop_reasons.items() if stage != "2"]
    if not reasons:
        return None
    return "early_stopping" if all(r == "early_stopping" for r in reasons) else "budget"


def _score_inference_steps(spec, trainer, model, test_data):
    """Test metrics of the chosen model at each of the protocol's reverse-chain
    lengths (``score_inference_steps``), for models with a reverse chain."""
    steps = spec.get("score_inference_steps") or []
    if not steps or not hasattr(model, "inference_steps"):
        return None
    original = model.inference_steps
    by_steps = {}
    try:
        for count in steps:
            model.inference_steps = int(count)
            result = trainer.evaluate(
                test_data, load_best_model=False, show_progress=False
            )
            by_steps[str(count)] = _plain_metrics(result)
    finally:
        model.inference_steps = original
    return by_steps


def _safe(function):
    try:
        return function()
    except Exception:
        return None


# --------------------------------------------------------------------------- #
# the runner (parent process)
# --------------------------------------------------------------------------- #
def _unit_log_path(work_dir, spec):
    name = (
        f"{spec['dataset']}.{spec['protocol']}.{spec['model']}.seed{spec['seed']}.log"
    )
    return Path(work_dir) / "logs" / name


def _tail(path, lines=15):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:]).strip()
    except OSError:
        return ""


def run_child(mode, spec, log_path, work_dir, timeout=None):
    """Run ``run.py --child=<mode>`` on ``spec``; return (result, exit code, error).

    The child writes its result as JSON to a file; stdout and stderr go to
    ``log_path``. A timeout kills the child.
    """
    work_dir = Path(work_dir).resolve()
    exchange = work_dir / "exchange"
    exchange.mkdir(parents=True, exist_ok=True)
    stamp = f"{os.getpid()}.{time.time_ns()}"
    spec_file = exchange / f"spec.{stamp}.json"
    result_file = exchange / f"result.{stamp}.json"
    spec_file.write_text(json.dumps(spec), encoding="utf-8")
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        str(BENCH_DIR / "run.py"),
        f"--child={mode}",
        f"--spec={spec_file}",
        f"--result={result_file}",
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    error = None
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n===== {now_iso()} {' '.join(command)}\n")
        log.flush()
        try:
            completed = subprocess.run(
                command,
                cwd=work_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
            code = completed.returncode
        except subprocess.TimeoutExpired:
            code = None
            error = f"timed out after {timeout} s"
    result = None
    if result_file.is_file():
        result = json.loads(result_file.read_text(encoding="utf-8"))
        result_file.unlink()
    spec_file.unlink(missing_ok=True)
    if result is None and error is None:
        error = (
            f"child exited with code {code} and no result; log tail:\n{_tail(log_path)}"
        )
    return result, code, error


def _relative(path):
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
