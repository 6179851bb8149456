"""Unit-level resume of benchmark units: an interrupted unit, rerun, gives the
record of an uninterrupted run.

The interruption is real: the unit's child process kills itself with SIGKILL
right after saving the state of epoch k (``INTERRUPT_ENV``), as a time limit
or a restart would, and the same ``benchmarks/run.py`` command is run again.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402
from benchmarks.unit_state import FAIL_ENV, INTERRUPT_ENV  # noqa: E402

# Early stopping must be able to end a stage: patience 1 on a noisy tiny task.
PROTOCOL = """\
description: resume test
seeds: [2020]
threads: 1
common:
  epochs: 6
  stopping_step: 1
  eval_step: 1
  train_batch_size: 16
  eval_batch_size: 64
  hidden_size: 16
  embedding_size: 16
  inner_size: 32
  MAX_ITEM_LIST_LENGTH: 10
  worker: 0
  learning_rate: 0.003
models:
  ADRec:
    pretrain_epochs: 3
    warmup_epochs: 2
    epochs: 3
    diffusion_steps: 4
    n_heads: 2
"""


def _run(args, interrupt_after=None, fail_after=None):
    env = dict(os.environ)
    env.pop(INTERRUPT_ENV, None)
    env.pop(FAIL_ENV, None)
    if interrupt_after is not None:
        env[INTERRUPT_ENV] = str(interrupt_after)
    if fail_after is not None:
        env[FAIL_ENV] = str(fail_after)
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *args, "--no-render"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=ROOT,
        env=env,
    )


def _args(tmp_path, data_path, name, model):
    protocol = tmp_path / "resume.yaml"
    protocol.write_text(PROTOCOL)
    return [
        "--dataset=tiny",
        f"--models={model}",
        "--seeds=1",
        f"--protocol={protocol}",
        f"--data-path={data_path}",
        f"--results-dir={tmp_path / name / 'results'}",
        f"--work-dir={tmp_path / name / 'work'}",
    ]


def _records(tmp_path, name):
    raw = tmp_path / name / "results" / "raw" / "tiny.resume.jsonl"
    return [json.loads(line) for line in raw.read_text().splitlines()]


# Fields that differ between two runs of the same unit by nature.
VOLATILE = {
    "started_at",
    "finished_at",
    "wall_seconds",
    "train_seconds",
    "epoch_seconds",
    "seconds_per_epoch",
    "users_per_second",
    "throughput_users",
    "peak_memory_mb",
    "log",
    "exit_code",
    "machine",
    "model_file",
    "resumed",
    "resumes",
    "versions",
}


@pytest.mark.parametrize(
    "model, interrupts, new_clone",
    [
        # SASRec: interrupted after epoch 2 of 6
        ("SASRec", [2], False),
        # ADRec: inside stage 1, then in the warm-up (stage 2); the last run is
        # in a new clone: the work folder (checkpoints included) is gone
        ("ADRec", [2, 4], True),
    ],
)
def test_interrupted_unit_continues_to_the_same_record(
    tmp_path, model, interrupts, new_clone
):
    """Catches: a resume that forgets the optimizer, the schedule, the early-
    stopping counter, ADRec's stage or an RNG (the metrics or the validation
    curve would then differ from the straight run), or that starts over; and
    a new clone, which lacks the git-ignored work folder, that trains the unit
    again instead of continuing from the committed carry folder (or a carry
    folder that misses a stage's best checkpoint, or is left behind)."""
    data_path = write_tiny_dataset(str(tmp_path / "data"))
    straight = _run(_args(tmp_path, data_path, "straight", model))
    assert straight.returncode == 0, straight.stdout + straight.stderr
    [expected] = _records(tmp_path, "straight")
    assert expected["status"] == "ok", expected.get("error")
    assert expected["stop_reason"] in ("early_stopping", "budget")

    args = _args(tmp_path, data_path, "resumed", model)
    progress = tmp_path / "resumed" / "results" / "raw" / "progress"
    for count, epochs in enumerate(interrupts, 1):
        interrupted = _run(args, interrupt_after=epochs)
        assert interrupted.returncode == 0, interrupted.stdout + interrupted.stderr
        records = _records(tmp_path, "resumed")
        assert len(records) == count and records[-1]["status"] == "crashed"
        # the page's source shows the unit as running, with its epochs so far
        [shown] = [json.loads(p.read_text()) for p in progress.glob("*.json")]
        assert shown["status"] == "running"
        assert shown["epochs_trained"] == epochs
        assert shown["best_valid_so_far"] == max(e[1] for e in shown["valid_curve"])
        # the files a resume needs are carried beside the progress file
        carried = progress / "tiny.resume"
        work = tmp_path / "resumed" / "work" / "checkpoints" / "tiny.resume"
        assert sorted(p.name for p in carried.iterdir()) == sorted(
            p.name for p in work.iterdir() if p.suffix == ".pth"
        )
    if new_clone:
        shutil.rmtree(tmp_path / "resumed" / "work")
    finished = _run(args)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert (
        "resumed after epoch"
        in (
            tmp_path / "resumed" / "work" / "logs" / f"tiny.resume.{model}.seed2020.log"
        ).read_text()
    )
    record = _records(tmp_path, "resumed")[-1]
    assert record["status"] == "ok", record.get("error")
    assert record["resumed"] == len(interrupts)
    assert [r["epochs_trained"] for r in record["resumes"]] == interrupts
    assert len(record["epoch_seconds"]) == expected["epochs_trained"]
    for key in set(expected) - VOLATILE - {"config"}:
        assert record[key] == expected[key], key
    # the two runs differ only in their working folders
    for config in (record["config"], expected["config"]):
        config.pop("checkpoint_dir")
    assert record["config"] == expected["config"]
    # finished: no progress file, no resume state left behind
    assert not list(progress.glob("*.json"))
    assert not list((tmp_path / "resumed" / "work").rglob("*.resume.pth"))
    assert not list(progress.rglob("*.pth"))
    # and a rerun skips it
    again = _run(args)
    assert "0 units run" in again.stdout


def test_a_failed_unit_keeps_its_state_for_retry_failed(tmp_path):
    """Catches a failed unit's epochs thrown away (an error in epoch 45 of a
    45-epoch unit would cost all of them), a plain rerun that retries a
    failed unit on its own, a failed unit shown as running, and a retry that
    starts over instead of continuing to the straight run's record."""
    data_path = write_tiny_dataset(str(tmp_path / "data"))
    straight = _run(_args(tmp_path, data_path, "straight", "SASRec"))
    assert straight.returncode == 0, straight.stdout + straight.stderr
    [expected] = _records(tmp_path, "straight")

    args = _args(tmp_path, data_path, "failed", "SASRec")
    failed = _run(args, fail_after=2)
    assert failed.returncode == 0, failed.stdout + failed.stderr
    [record] = _records(tmp_path, "failed")
    assert record["status"] == "failed" and FAIL_ENV in record["error"]
    work = tmp_path / "failed" / "work"
    assert len(list(work.rglob("*.resume.pth"))) == 1
    progress = tmp_path / "failed" / "results" / "raw" / "progress"
    assert not list(progress.glob("*.json"))

    again = _run(args)
    assert "0 units run" in again.stdout, again.stdout
    # a damaged state: the retry fails on it, removes it, the next starts afresh
    [state] = work.rglob("*.resume.pth")
    intact = state.read_bytes()
    state.write_bytes(b"not a checkpoint")
    broken = _run([*args, "--retry-failed"])
    assert "led to no new epoch: removed" in broken.stdout, broken.stdout
    assert _records(tmp_path, "failed")[-1]["status"] == "failed"
    assert not list(work.rglob("*.resume.pth"))
    state.write_bytes(intact)  # put back, to check the retry continues from it
    retried = _run([*args, "--retry-failed"])
    assert retried.returncode == 0, retried.stdout + retried.stderr
    record = _records(tmp_path, "failed")[-1]
    assert record["status"] == "ok", record.get("error")
    assert [r["epochs_trained"] for r in record["resumes"]] == [2]
    for key in set(expected) - VOLATILE - {"config"}:
        assert record[key] == expected[key], key
    assert not list(work.rglob("*.resume.pth"))


def test_a_resume_state_of_another_protocol_is_ignored(tmp_path):
    """Catches: a state of a changed protocol (another fingerprint) restored."""
    from benchmarks.unit_state import load_resume_state

    spec = {"model": "SASRec", "seed": 1, "fingerprint": "abc", "dataset": "d"}
    path = tmp_path / "state.pth"
    import torch

    torch.save(
        {"format": 1, "model": "SASRec", "seed": 1, "fingerprint": "other"}, path
    )
    assert load_resume_state(path, spec) is None
    torch.save({"format": 1, "model": "SASRec", "seed": 1, "fingerprint": "abc"}, path)
    assert load_resume_state(path, spec)["fingerprint"] == "abc"


def test_stop_reason_counts_every_stage_but_the_warm_up():
    assert harness.unit_stop_reason({"None": "early_stopping"}) == "early_stopping"
    assert harness.unit_stop_reason({"None": "budget"}) == "budget"
    adrec = {"1": "early_stopping", "2": "budget", "3": "early_stopping"}
    assert harness.unit_stop_reason(adrec) == "early_stopping"
    adrec["1"] = "budget"
    assert harness.unit_stop_reason(adrec) == "budget"
    assert harness.unit_stop_reason({}) is None


def test_a_unit_running_in_another_process_is_skipped(tmp_path):
    """Catches two processes training the same unit at once (two seeds run
    side by side from overlapping commands), and a lock left behind by a
    dead process blocking its unit for good."""
    from benchmarks.protocol import load_protocol
    from benchmarks.runner import plan_units
    from benchmarks.unit_state import unit_file_stem

    data_path = write_tiny_dataset(str(tmp_path / "data"))
    args = _args(tmp_path, data_path, "locked", "SASRec")
    [unit], _ = plan_units(
        "tiny", ["SASRec"], 1, load_protocol(str(tmp_path / "resume.yaml")), []
    )
    checkpoint_dir = tmp_path / "locked" / "work" / "checkpoints" / "tiny.resume"
    checkpoint_dir.mkdir(parents=True)
    lock = checkpoint_dir / f"{unit_file_stem(unit)}.lock"
    lock.write_text(str(os.getpid()))  # held by a live process: this one
    busy = _run(args)
    assert "running in process" in busy.stdout and "0 units run" in busy.stdout, (
        busy.stdout
    )
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    lock.write_text(finished.stdout.strip())  # held by a process that is gone
    done = _run(args)
    assert "1 units run" in done.stdout, done.stdout + done.stderr
    assert _records(tmp_path, "locked")[-1]["status"] == "ok"
    assert not lock.exists()
