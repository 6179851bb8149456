"""Benchmark units: protocols, the raw results file, and the run of one unit.

A *unit* is one (dataset, protocol, model, seed). The runner (``run.py``)
starts every unit in a child process of its own, so peak memory is measured
per unit and a crash ends that unit only, then appends the unit's record to
``results/raw/<dataset>.<protocol>.jsonl`` as soon as the child returns. A
rerun skips the units that the raw file already holds, so a long table is
built over several runs.

A *protocol* (``protocols/<name>.yaml``) is a set of RecBole parameters laid
on top of each model's property files (``props/<Model>.yaml``):

.. code-block:: yaml

    description: one paragraph that the rendered page quotes
    seeds: [2020, 2021, 2022]     # --seeds=N runs the first N
    threads: 1                    # torch threads per unit (~: torch's default)
    common: {...}                 # every model, every dataset
    datasets: {ml-1m: {...}}      # every model, on one dataset (and a
                                  # ``models`` mapping inside: one model there)
    models: {DiffuRec: {...}}     # one model (a variant also gets its base's)

``protocols/<name>/<Model>.yaml`` files, when present, extend ``models``.
Precedence, lowest first: common, datasets, models (base, then variant),
datasets.<dataset>.models, then what the harness sets itself (seed,
checkpoint folder, data path).
"""

import datetime
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

import yaml

__all__ = [
    "BENCH_DIR",
    "DEFAULT_PROTOCOL",
    "METRICS",
    "ProtocolError",
    "append_raw",
    "execute_unit",
    "fingerprint",
    "is_diffusion",
    "latest_records",
    "load_protocol",
    "raw_path",
    "read_raw",
    "run_child",
    "unit_overrides",
]

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
PROTOCOL_DIR = BENCH_DIR / "protocols"
DEFAULT_RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_WORK_DIR = BENCH_DIR / "work"
DEFAULT_PROTOCOL = "cpu"
SCHEMA_VERSION = 1

# Base names of the diffusion models; every other model is a baseline.
DIFFUSION_MODELS = ("ADRec", "CDDRec", "DiffuRec", "DiffuRecSys")
# Test metrics of the table, in RecBole's names (Hit is HR).
METRICS = ("hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@20")

OK = "ok"
FAILED = "failed"
DIVERGED = "diverged"
CRASHED = "crashed"
TIMEOUT = "timeout"


class ProtocolError(ValueError):
    """A protocol file that cannot be used; the message says what to change."""


def is_diffusion(model):
    """Whether ``model`` (``DiffuRecSys-V1`` counts as DiffuRecSys) is a diffusion model."""
    return model.split("-", 1)[0] in DIFFUSION_MODELS


def now_iso():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------- #
# protocols
# --------------------------------------------------------------------------- #
def _read_yaml(path):
    with open(path, encoding="utf-8") as handle:
        content = yaml.safe_load(handle)
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ProtocolError(f"'{path}' must hold a mapping of 'key: value' lines.")
    return content


def _mapping(value, where):
    value = value or {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a mapping, found {type(value).__name__}.")
    return value


def load_protocol(name_or_path):
    """Read a protocol by name (``protocols/<name>.yaml``) or by file path.

    Returns:
        dict: ``name``, ``path``, ``description``, ``seeds``, ``threads``,
        ``common``, ``datasets``, ``models``.
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        path = candidate
    else:
        path = PROTOCOL_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))
        raise ProtocolError(
            f"Protocol '{name_or_path}' not found ({path}). Known: {', '.join(known)}."
        )
    content = _read_yaml(path)
    allowed = {
        "name",
        "description",
        "seeds",
        "threads",
        "common",
        "datasets",
        "models",
        "score_inference_steps",
    }
    unknown = set(content) - allowed
    if unknown:
        raise ProtocolError(
            f"'{path}': unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}. "
            "RecBole parameters go under 'common', 'datasets' or 'models'."
        )
    seeds = content.get("seeds") or [2020, 2021, 2022, 2023, 2024]
    if not isinstance(seeds, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in seeds
    ):
        raise ProtocolError(f"'{path}': seeds must be a list of integers.")
    models = {
        str(k): dict(_mapping(v, f"models.{k}"))
        for k, v in _mapping(content.get("models"), "models").items()
    }
    model_dir = path.parent / path.stem
    if model_dir.is_dir():
        for model_file in sorted(model_dir.glob("*.yaml")):
            models.setdefault(model_file.stem, {}).update(_read_yaml(model_file))
    datasets = {
        str(k): dict(_mapping(v, f"datasets.{k}"))
        for k, v in _mapping(content.get("datasets"), "datasets").items()
    }
    return {
        "name": str(content.get("name") or path.stem),
        "path": str(path),
        "description": " ".join(str(content.get("description") or "").split()),
        "seeds": seeds,
        "threads": content.get("threads"),
        "score_inference_steps": list(content.get("score_inference_steps") or []),
        "common": dict(_mapping(content.get("common"), "common")),
        "datasets": datasets,
        "models": models,
    }


def _model_entries(models, model):
    """The entries of ``models`` for ``model``: its base's first, then its own."""
    base = model.split("-", 1)[0]
    names = [base, model] if base != model else [model]
    return [dict(models.get(name) or {}) for name in names]


def common_overrides(protocol, dataset):
    """The parameters the protocol sets for every model on ``dataset``."""
    overrides = dict(protocol["common"])
    dataset_entry = dict(protocol["datasets"].get(dataset, {}))
    dataset_entry.pop("models", None)
    overrides.update(dataset_entry)
    return overrides


def unit_overrides(protocol, dataset, model):
    """The RecBole parameters the protocol sets for ``model`` on ``dataset``.

    Lowest first: ``common``, ``datasets.<dataset>``, ``models.<Model>``,
    ``datasets.<dataset>.models.<Model>``.
    """
    overrides = dict(protocol["common"])
    dataset_entry = dict(protocol["datasets"].get(dataset, {}))
    dataset_models = _mapping(dataset_entry.pop("models", None), "datasets.models")
    overrides.update(dataset_entry)
    for entry in _model_entries(protocol["models"], model):
        overrides.update(entry)
    for entry in _model_entries(dataset_models, model):
        overrides.update(entry)
    return overrides


def fingerprint(overrides):
    """A short hash of a unit's protocol parameters: a changed protocol reruns it."""
    text = json.dumps(overrides, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------- #
# the raw results file
# --------------------------------------------------------------------------- #
def raw_path(results_dir, dataset, protocol_name):
    return Path(results_dir) / "raw" / f"{dataset}.{protocol_name}.jsonl"


def read_raw(path):
    """All records of a raw file, in file order; unreadable lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"warning: {path}:{number} is not JSON; skipped", file=sys.stderr)
    return records


def append_raw(path, record):
    """Append one record as one line, flushed to disk before returning."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True, allow_nan=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def latest_records(records):
    """The last record of each (model, seed): a retried unit replaces the earlier."""
    latest = {}
    for record in records:
        if record.get("kind", "unit") != "unit":
            continue
        latest[(record["model"], record["seed"])] = record
    return latest


# --------------------------------------------------------------------------- #
# environment
# --------------------------------------------------------------------------- #
def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args):
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def library_versions():
    import numpy
    import recbole
    import torch

    import recbole_diffusion

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "recbole": recbole.__version__,
        "numpy": numpy.__version__,
        "recbole_diffusion": recbole_diffusion.__version__,
        "git_commit": _git("rev-parse", "--short=12", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


def machine_info(device=None):
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(terse=True),
        "gpu": None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if device is not None and str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_memory(device):
    """Peak memory of this process in MiB: GPU allocations on CUDA, else RSS."""
    import torch

    if device is not None and str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, "rss"


def build_with_stats(model, dataset, config_dict):
    """``build_pipeline`` that also returns the dataset's statistics.

    The statistics are taken when the dataset is created, before the split
    (a built sequential dataset holds the augmented rows, not the
    interactions): the plugin's ``create_dataset`` is wrapped for the call.
    """
    from recbole_diffusion import quick_start

    stats = {}
    original = quick_start.create_dataset

    def create_and_count(config):
        created = original(config)
        stats.update(dataset_stats(created))
        return created

    quick_start.create_dataset = create_and_count
    try:
        pieces = quick_start.build_pipeline(
            model=model, dataset=dataset, config_dict=config_dict
        )
    finally:
        quick_start.create_dataset = original
    return pieces, stats


def dataset_stats(dataset):
    """Users, items and interactions after RecBole's loading and filtering."""
    users = int(dataset.user_num) - 1  # id 0 is padding
    items = int(dataset.item_num) - 1
    inters = int(dataset.inter_num)
    return {
        "users": users,
        "items": items,
        "interactions": inters,
        "avg_length": inters / users if users else None,
        "density": inters / (users * items) if users and items else None,
    }


def to_plain(value):
    """A configuration value as JSON (torch devices, enums and tuples become plain)."""
    from recbole_diffusion.trainer.checkpoint import to_plain as plain

    value = plain(value)
    if isinstance(value, float) and value != value:
        return None
    return value


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
