"""Per-epoch metrics of a reference's own training loop, and its child process.

The reference codes print only their best validation scores. To draw their
learning curve, their loop runs unchanged in a child process in which
:class:`MetricRecorder` learns the phase (training, validation after epoch N,
test) from a wrapper the recipe puts around the loop (ADRec: its progress
bar, whose description names the phase; DiffuRec and DiffuRecSys: their data
loaders) and wraps the metric function (whose inputs, the scores and the
targets, are recorded; its own return value is passed on untouched). The recorded scores
give per-user metrics by :func:`rank_metrics`, the way RecBole averages them.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["KS", "MetricRecorder", "child_main", "rank_metrics", "run_child"]

KS = (5, 10, 20)
RESULT_PREFIX = "PARITY_RESULT "
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def rank_metrics(scores, targets, ks=KS):
    """Per-user HR@k and NDCG@k of ``targets`` [B] under ``scores`` [B items].

    A target's rank is the number of items scored strictly higher (ties
    count in its favour); HR@k = rank < k, NDCG@k = 1 / log2(rank + 2) there.
    Returns a dict ``"hit@k"``/``"ndcg@k"`` -> numpy array [B].
    """
    import torch

    scores = torch.as_tensor(scores).float()
    targets = torch.as_tensor(targets).long().reshape(-1, 1)
    target_scores = scores.gather(1, targets)
    rank = (scores > target_scores).sum(dim=1).numpy()
    result = {}
    for k in ks:
        hit = rank < k
        result[f"hit@{k}"] = hit.astype(float)
        result[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    return result


_TRAIN = re.compile(r"^\s*Epoch:\s*(\d+)")
_VALID = re.compile(r"Epoch:\s*(\d+)")


def adrec_phase(description):
    """Phase of a progress bar of the ADRec/DiffuRec family's ``model_train``.

    ``"Epoch: N"`` trains epoch N, ``"Denoising..., Epoch: N"`` validates
    after it, a bar without description runs the test.
    """
    if not description:
        return ("test", None)
    train = _TRAIN.match(description)
    if train:
        return ("train", int(train.group(1)))
    valid = _VALID.search(description)
    if valid:
        return ("valid", int(valid.group(1)))
    return ("other", None)


class MetricRecorder:
    """Collects the reference's scored batches per phase, and its training time."""

    def __init__(self, phase_of=adrec_phase):
        self.phase_of = phase_of
        self.phase = ("setup", None)
        self.batches = {}  # phase -> list of per-user metric dicts
        self.reported = {}  # phase -> list of the reference's own batch values
        self.train_seconds = 0.0
        self._phase_start = time.perf_counter()

    def enter(self, phase):
        now = time.perf_counter()
        if self.phase[0] == "train":
            self.train_seconds += now - self._phase_start
        self.phase, self._phase_start = phase, now

    def progress(self, original):
        """A stand-in for the reference's ``tqdm``: notes the phase, shows no bar."""
        recorder = self

        def progress_bar(iterable=None, *args, desc=None, **kwargs):
            recorder.enter(recorder.phase_of(desc))
            kwargs["disable"] = True
            return original(iterable, *args, desc=desc, **kwargs)

        return progress_bar

    def record(self, scores, targets, reported=None):
        self.batches.setdefault(self.phase, []).append(rank_metrics(scores, targets))
        if reported is not None:
            self.reported.setdefault(self.phase, []).append(reported)

    def wrap_metrics(self, original):
        """The reference's ``hrs_and_ndcgs_k(scores, labels, ks)``, recorded."""
        recorder = self

        def metrics(scores, labels, ks):
            reported = original(scores, labels, ks)
            recorder.record(
                scores.detach().cpu(), labels.detach().cpu()[:, -1], reported
            )
            return reported

        return metrics

    def _mean(self, phase):
        batches = self.batches.get(phase)
        if not batches:
            return None
        return {
            key: float(np.concatenate([batch[key] for batch in batches]).mean())
            for key in batches[0]
        }

    def valid_curve(self):
        epochs = sorted(e for kind, e in self.batches if kind == "valid")
        return [[e, round(self._mean(("valid", e))["ndcg@10"], 6)] for e in epochs]

    def best_epoch_any_metric(self):
        """The epoch the ADRec/DiffuRec family keeps: the last at which any
        of its six printed metrics (mean of batch means, in percent, rounded
        to 4 places) beat its best so far."""
        best, chosen = {}, None
        for kind, epoch in sorted(p for p in self.reported if p[0] == "valid"):
            batches = self.reported[(kind, epoch)]
            for key in batches[0]:
                value = round(float(np.mean([b[key] for b in batches])) * 100, 4)
                if value > best.get(key, 0):
                    best[key], chosen = value, epoch
        return chosen

    def result(self, epochs):
        self.enter(("done", None))
        test = self._mean(("test", None)) or {}
        return {
            "valid_curve": self.valid_curve(),
            "test": {key: round(value, 6) for key, value in test.items()},
            "test_users": sum(
                len(b["hit@10"]) for b in self.batches.get(("test", None), [])
            ),
            "train_seconds": round(self.train_seconds, 2),
            "epochs_trained": epochs,
            "best_epoch": self.best_epoch_any_metric(),
        }


def run_child(module, spec, work_dir, log_path, timeout=None):
    """Run ``python -m module --child SPEC`` at 1 thread; return its result dict."""
    work_dir, log_path = Path(work_dir), Path(log_path)
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    spec_file = work_dir / "spec.json"
    spec_file.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PROJECT_ROOT)]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    with open(log_path, "w", encoding="utf-8") as log:
        completed = subprocess.run(
            [sys.executable, "-m", module, "--child", str(spec_file)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    text = log_path.read_text(encoding="utf-8", errors="replace")
    results = [line for line in text.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode != 0 or not results:
        tail = "\n".join(text.splitlines()[-15:])
        raise RuntimeError(
            f"{module} child failed (exit {completed.returncode}); log {log_path}:\n{tail}"
        )
    return json.loads(results[-1][len(RESULT_PREFIX) :])


def child_main(child, description):
    """Entry point of a recipe's child process: ``--child SPEC`` in, one result line out."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--child", required=True, help="JSON spec of the run")
    options = parser.parse_args()
    with open(options.child, encoding="utf-8") as handle:
        spec = json.load(handle)
    print(RESULT_PREFIX + json.dumps(child(spec)), flush=True)
