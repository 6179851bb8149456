"""Unit-level resume: the state of a unit's training after every epoch.

A benchmark unit can run for hours, longer than the process that runs it may
live. After every validation (every epoch under the ``converged`` protocol)
the unit's trainer writes a *resume state*: the current weights (not only the
best), the optimizer and learning-rate schedule, RecBole's early-stopping
counter and best score, ADRec's stage and its per-stage bookkeeping, the
benchmark's own records (epoch times, validation curve) and every random
number generator that training draws from (torch's, numpy's, Python's and the
data loaders'). Rerunning the same ``benchmarks/run.py`` command finds the
file and continues after that epoch; the record it finally writes is what an
uninterrupted run would have written, plus the list of resumes.

A small JSON *progress file* is written beside the raw results at the same
moment, so that the page shows a unit in progress ("running: epoch k, best
valid NDCG@10 so far") instead of leaving it out.

The unit's files that a resume needs (the resume state and the best
checkpoints) are also copied beside the progress file, into the *carry
folder* ``results/raw/progress/<dataset>.<protocol>/``. The checkpoint folder
lives in the git-ignored work folder and is lost with the clone; the carry
folder is committed with the progress files, so a fresh clone (another
machine, a later day) continues the unit instead of training it again.

Files are written with ``torch.save`` to a temporary name and renamed, and
read back with ``weights_only=True``: a resume state holds tensors and plain
values only.
"""

import json
import os
import random
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from recbole_diffusion.trainer.checkpoint import load_checkpoint

__all__ = [
    "FAIL_ENV",
    "INTERRUPT_ENV",
    "STATE_FORMAT",
    "ResumableTrainerMixin",
    "carried_files",
    "load_resume_state",
    "unit_file_stem",
]

STATE_FORMAT = 1
# Test hook: the child kills itself (SIGKILL) right after saving the resume
# state of this many trained epochs, as a time limit or a restart would.
INTERRUPT_ENV = "RECBOLE_DIFFUSION_BENCH_INTERRUPT_AFTER_EPOCHS"
# Test hook: training raises an error right after saving the resume state of
# this many trained epochs, as a bug or a full disk would (the unit fails).
FAIL_ENV = "RECBOLE_DIFFUSION_BENCH_FAIL_AFTER_EPOCHS"


def unit_file_stem(spec):
    """A unit's file name stem: the same for every run of the same unit."""
    model = spec["model"].replace("+", "Plus")
    return f"{model}.seed{spec['seed']}.{spec['fingerprint']}"


def carried_files(folder, spec):
    """The unit's files in ``folder`` that a resume needs, resume state last.

    Its best checkpoint ``<stem>.pth`` (ADRec: one per stage,
    ``<stem>-stage<k>.pth``) and its resume state ``<stem>.resume.pth``; the
    resume state comes last so that whoever copies them in this order never
    leaves a resume state without the checkpoints it refers to.
    """
    folder = Path(folder)
    stem = unit_file_stem(spec)
    files = sorted(folder.glob(f"{stem}-stage*.pth")) + [folder / f"{stem}.pth"]
    files.append(folder / f"{stem}.resume.pth")
    return [path for path in files if path.is_file()]


def copy_file(source, target):
    """Copy to a temporary name and rename: a reader never sees half a file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, target)


def _plain_result(result):
    if result is None:
        return None
    return {str(key): float(value) for key, value in result.items()}


def _scheduler_state(scheduler):
    if scheduler is None:
        return None
    # MultiStepLR keeps its milestones in a Counter, which weights-only
    # loading refuses; a dict with the same int keys loads back the same.
    return {
        key: dict(value) if isinstance(value, Counter) else value
        for key, value in scheduler.state_dict().items()
    }


def _rng_state(loaders):
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (
            numpy_state[0],
            torch.from_numpy(numpy_state[1].astype(np.int64)),
            int(numpy_state[2]),
            int(numpy_state[3]),
            float(numpy_state[4]),
        ),
        "python": random.getstate(),
        "loaders": [loader.generator.get_state() for loader in loaders],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def _restore_rng(state, loaders):
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state(
        (name, keys.numpy().astype(np.uint32), position, has_gauss, cached)
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for loader, loader_state in zip(loaders, state["loaders"]):
        loader.generator.set_state(loader_state)
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume_state(path, spec):
    """The resume state at ``path`` if it belongs to this unit, else None."""
    path = Path(path)
    if not path.is_file():
        return None
    state = load_checkpoint(str(path))
    same_unit = (
        isinstance(state, dict)
        and state.get("format") == STATE_FORMAT
        and state.get("fingerprint") == spec["fingerprint"]
        and state.get("seed") == spec["seed"]
        and state.get("model") == spec["model"]
    )
    return state if same_unit else None


def _write_json(path, payload):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, sort_keys=True, indent=1), encoding="utf-8")
    os.replace(partial, path)


class ResumableTrainerMixin:
    """Writes a resume state after every validation and restores it.

    Mixed into the benchmark's trainer class (``harness.timed_trainer_class``)
    ahead of the model's own trainer. ``bench_setup`` names the unit's files;
    ``bench_epoch_end`` is passed to ``fit`` as its ``callback_fn``.
    """

    bench_resume_file = None
    bench_progress_file = None
    bench_unit = None

    def bench_setup(self, spec, loaders, resume_file, progress_file, model_file):
        """Fix the unit's file names, so that a rerun finds the same files."""
        self.bench_unit = {k: spec[k] for k in ("model", "seed", "fingerprint")}
        self.bench_unit["dataset"] = spec["dataset"]
        self.bench_unit["protocol"] = spec["protocol"]
        self.bench_loaders = loaders
        self.bench_resume_file = str(resume_file)
        self.bench_progress_file = str(progress_file) if progress_file else None
        self.bench_carry_dir = spec.get("carry_dir")
        self.bench_resumes = []
        self.bench_prior_seconds = 0.0
        self.bench_prior_train_seconds = 0.0
        self.bench_clock = time.perf_counter()
        self.bench_stop_reasons = {}
        self.saved_model_file = str(model_file)
        if hasattr(self, "stage_files"):  # ADRec: one best file per stage
            stem, extension = os.path.splitext(self.saved_model_file)
            self.stage_files = {
                stage: f"{stem}-stage{stage}{extension}" for stage in self.stage_files
            }

    # ------------------------------------------------------------------ #
    # saving
    # ------------------------------------------------------------------ #
    def _bench_stage_finished(self, epoch_idx):
        if self.cur_step > self.stopping_step:
            return "early_stopping"
        if epoch_idx + 1 >= self.epochs:
            return "budget"
        return None

    def bench_epoch_end(self, epoch_idx, valid_score):
        """``callback_fn`` of ``fit``: runs after each validation."""
        stage = getattr(self, "stage", None)
        finished = self._bench_stage_finished(epoch_idx)
        if finished:
            self.bench_stop_reasons[str(stage)] = finished
        elapsed = time.perf_counter() - self.bench_clock
        state = {
            "format": STATE_FORMAT,
            **{k: self.bench_unit[k] for k in ("model", "seed", "fingerprint")},
            "epoch": epoch_idx,
            "stage": stage,
            "stage_finished": finished,
            "weights": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": _scheduler_state(getattr(self, "scheduler", None)),
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "best_valid_result": _plain_result(self.best_valid_result),
            "bench": {
                "epoch_seconds": list(self.bench_epoch_seconds),
                "valid_curve": [list(entry) for entry in self.bench_valid_curve],
                "saved_epochs": [list(entry) for entry in self.bench_saved_epochs],
                "stop_reasons": dict(self.bench_stop_reasons),
                "resumes": list(self.bench_resumes),
                "unit_seconds": self.bench_prior_seconds + elapsed,
            },
            "rng": _rng_state(self.bench_loaders),
        }
        if stage is not None:  # ADRec's stage bookkeeping
            state["adrec"] = {
                "stage_files": {str(k): v for k, v in self.stage_files.items()},
                "stage_scores": {
                    str(k): float(v) for k, v in self.stage_scores.items()
                },
                "stage_results": {
                    str(k): _plain_result(v) for k, v in self.stage_results.items()
                },
                "stage_history": list(self.stage_history),
                "best_epoch": self._best_epoch,
            }
        partial = self.bench_resume_file + ".partial"
        torch.save(state, partial)
        os.replace(partial, self.bench_resume_file)
        self._bench_carry()
        self._bench_write_progress(epoch_idx, stage)
        interrupt_after = os.environ.get(INTERRUPT_ENV)
        if interrupt_after and len(self.bench_epoch_seconds) == int(interrupt_after):
            os.kill(os.getpid(), 9)
        fail_after = os.environ.get(FAIL_ENV)
        if fail_after and len(self.bench_epoch_seconds) == int(fail_after):
            raise RuntimeError(f"{FAIL_ENV}={fail_after}: failing on purpose")

    def _bench_carry(self):
        """Copy the files a resume needs into the committed carry folder."""
        if not self.bench_carry_dir:
            return
        folder = os.path.dirname(self.bench_resume_file)
        for source in carried_files(folder, self.bench_unit):
            copy_file(source, Path(self.bench_carry_dir) / source.name)

    def _bench_write_progress(self, epoch_idx, stage):
        if not self.bench_progress_file:
            return
        scores = [entry[1] for entry in self.bench_valid_curve]
        _write_json(
            self.bench_progress_file,
            {
                **self.bench_unit,
                "status": "running",
                "epochs_trained": len(self.bench_epoch_seconds),
                "epoch": epoch_idx,
                "stage": stage,
                "best_valid_so_far": max(scores) if scores else None,
                "valid_curve": [list(entry) for entry in self.bench_valid_curve],
                "epoch_seconds": list(self.bench_epoch_seconds),
                "resumes": len(self.bench_resumes),
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )

    # ------------------------------------------------------------------ #
    # restoring
    # ------------------------------------------------------------------ #
    def bench_restore(self, state):
        """Continue after the epoch that ``state`` was saved at."""
        bench = state["bench"]
        self.bench_epoch_seconds = list(bench["epoch_seconds"])
        self.bench_valid_curve = [list(entry) for entry in bench["valid_curve"]]
        self.bench_saved_epochs = [tuple(entry) for entry in bench["saved_epochs"]]
        self.bench_stop_reasons = dict(bench["stop_reasons"])
        self.bench_prior_seconds = float(bench["unit_seconds"])
        self.bench_resumes = list(bench["resumes"]) + [
            {
                "epoch": state["epoch"],
                "stage": state["stage"],
                "epochs_trained": len(self.bench_epoch_seconds),
            }
        ]
        finished = state["stage_finished"]
        if state["stage"] is not None:
            self._bench_restore_stage(state)
        if finished:
            # the stage ended at that epoch: go on from its best weights
            best = load_checkpoint(self.saved_model_file, map_location=self.device)
            self.model.load_state_dict(best["state_dict"])
        else:
            self.model.load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        if getattr(self, "scheduler", None) is not None and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = self.epochs if finished else state["epoch"] + 1
        self.cur_step = state["cur_step"]
        self.best_valid_score = state["best_valid_score"]
        self.best_valid_result = state["best_valid_result"]
        if state["stage"] is not None:
            self._best_state = {
                key: value.detach().clone()
                for key, value in load_checkpoint(
                    self.saved_model_file, map_location=self.device
                )["state_dict"].items()
            }
        _restore_rng(state["rng"], self.bench_loaders)

    def _bench_restore_stage(self, state):
        """ADRec: re-enter the stage that was running (or had just ended)."""
        adrec = state["adrec"]
        stage = state["stage"]
        # stage_files stay as bench_setup named them (in this run's checkpoint
        # folder), so that a unit's files can move to another folder or machine
        self.stage_scores = {int(k): v for k, v in adrec["stage_scores"].items()}
        self.stage_results = {int(k): v for k, v in adrec["stage_results"].items()}
        self.stage_history = list(adrec["stage_history"])
        self._begin_stage(stage)  # optimizer over the stage's parameters, files
        self.epochs = self.stage_epochs[stage]
        self._best_epoch = adrec["best_epoch"]
        self._next_stage = stage
        self._resumed_stage = stage
