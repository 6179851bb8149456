"""The runner (parent process): which units to run, their child processes,
their records and their progress files.

A unit whose resume state exists in the checkpoint folder was interrupted
(a crash, a timeout, a killed process): it is run again and continues from
its last epoch (see ``benchmarks/unit_state.py``). A unit that finished (ok
or diverged) has its resume state and progress file removed. A failed unit
(an error in training: a bug, a full disk) keeps its resume state: a plain
rerun skips it, and ``--retry-failed`` continues it from its last epoch once
the cause is fixed, instead of training it again from the start. If a retry
fails again before finishing an epoch past the state, the state is removed (it
may be the cause) and the next retry starts afresh. A unit being run holds a
lock file (``<stem>.lock``, the runner's pid) in the checkpoint folder: a second
runner that reaches it skips it while that process lives.

The checkpoint folder is git-ignored. A unit's resume state and best
checkpoints are also kept in the carry folder beside its progress file
(``carry_path``), which is committed with it: a clone that lacks a unit's
resume state takes the carried one and continues the unit from there.
"""

import json
import os
import time
from pathlib import Path

from benchmarks.harness import DEFAULT_WORK_DIR, _relative, _unit_log_path, run_child
from benchmarks.protocol import (
    ProtocolError,
    common_overrides,
    fingerprint,
    unit_overrides,
)
from benchmarks.raw import (
    CRASHED,
    DEFAULT_RESULTS_DIR,
    DIVERGED,
    FAILED,
    OK,
    SCHEMA_VERSION,
    TIMEOUT,
    append_raw,
    latest_records,
    now_iso,
    raw_path,
    read_raw,
)

__all__ = [
    "carry_path",
    "plan_units",
    "progress_path",
    "read_progress",
    "run_units",
]


def progress_path(results_dir, unit):
    """The JSON file that shows a unit in progress on the page."""
    model = unit["model"].replace("+", "Plus")
    name = f"{unit['dataset']}.{unit['protocol']}.{model}.seed{unit['seed']}.json"
    return Path(results_dir) / "raw" / "progress" / name


def carry_path(results_dir, dataset, protocol_name):
    """The committed folder of the files that resume a table's units."""
    return Path(results_dir) / "raw" / "progress" / f"{dataset}.{protocol_name}"


def read_progress(results_dir, dataset, protocol_name):
    """The progress records of a table's units that are still running."""
    folder = Path(results_dir) / "raw" / "progress"
    records = []
    for path in sorted(folder.glob(f"{dataset}.{protocol_name}.*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return records


def _unit_file(checkpoint_dir, unit, suffix):
    """The unit's file ``<stem><suffix>`` in the checkpoint folder."""
    from benchmarks.unit_state import unit_file_stem

    return Path(checkpoint_dir) / f"{unit_file_stem(unit)}{suffix}"


def _unit_files_done(spec):
    """Remove a finished unit's resume state, carried files and progress file."""
    from benchmarks.unit_state import carried_files

    _unit_file(spec["checkpoint_dir"], spec, ".resume.pth").unlink(missing_ok=True)
    for path in carried_files(spec["carry_dir"], spec):
        path.unlink()
    Path(spec["progress_file"]).unlink(missing_ok=True)


def _adopt_carried_state(carry_dir, checkpoint_dir, unit):
    """Take the carried resume state when the checkpoint folder has none (a
    fresh clone); the carried files are copied, so they stay committed."""
    from benchmarks.unit_state import carried_files, copy_file

    if carry_dir is None or _has_resume_state(checkpoint_dir, unit):
        return
    files = carried_files(carry_dir, unit)
    if not files or not files[-1].name.endswith(".resume.pth"):
        return
    for source in files:  # the resume state last
        copy_file(source, Path(checkpoint_dir) / source.name)


def _resume_state_stamp(spec):
    """(size, modification time) of the unit's resume state, None if absent."""
    path = _unit_file(spec["checkpoint_dir"], spec, ".resume.pth")
    if not path.is_file():
        return None
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _claim_unit(spec):
    """Take the unit's lock file for this process: None when taken, else the
    pid of the live process that runs the unit (a lock of a dead process is
    taken over)."""
    path = _unit_file(spec["checkpoint_dir"], spec, ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder > 0 and holder != os.getpid() and _process_alive(holder):
                return holder
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(str(os.getpid()))
        return None
    raise RuntimeError(f"could not take the unit lock {path}")


def _has_resume_state(checkpoint_dir, unit):
    return _unit_file(checkpoint_dir, unit, ".resume.pth").is_file()


def plan_units(
    dataset,
    models,
    n_seeds,
    protocol,
    records,
    retry_failed=False,
    checkpoint_dir=None,
    carry_dir=None,
):
    """Split the requested units into (to run, skipped) given the raw records.

    A unit with a resume state in ``checkpoint_dir`` (interrupted: a crash, a
    timeout, a killed process) is run again, and continues, unless its latest
    record says ok, or failed (a failed unit continues only on
    ``retry_failed``). A resume state in ``carry_dir`` is first copied into a
    ``checkpoint_dir`` that has none.
    """
    if n_seeds > len(protocol["seeds"]):
        raise ProtocolError(
            f"--seeds={n_seeds} but protocol '{protocol['name']}' lists "
            f"{len(protocol['seeds'])} seeds; add seeds to its file."
        )
    latest = latest_records(records)
    to_run, skipped = [], []
    # seed-major: a partial run already holds one complete seed of every model
    for seed_index in range(n_seeds):
        seed = protocol["seeds"][seed_index]
        for model in models:
            overrides = unit_overrides(protocol, dataset, model)
            stamp = fingerprint(overrides)
            unit = {
                "dataset": dataset,
                "protocol": protocol["name"],
                "protocol_description": protocol["description"],
                "model": model,
                "seed": seed,
                "seed_index": seed_index,
                "overrides": overrides,
                "protocol_common": common_overrides(protocol, dataset),
                "fingerprint": stamp,
            }
            prior = latest.get((model, seed))
            same = prior is not None and prior.get("fingerprint") == stamp
            if checkpoint_dir is not None:
                _adopt_carried_state(carry_dir, checkpoint_dir, unit)
            interrupted = checkpoint_dir is not None and _has_resume_state(
                checkpoint_dir, unit
            )
            # a failed unit's kept resume state waits for --retry-failed
            resumable = (
                interrupted and prior is not None and prior.get("status") != FAILED
            )
            finished = same and (
                prior.get("status") == OK or not (retry_failed or resumable)
            )
            (skipped if finished else to_run).append(unit)
    return to_run, skipped


def run_units(
    dataset,
    models,
    n_seeds,
    protocol,
    results_dir=DEFAULT_RESULTS_DIR,
    work_dir=DEFAULT_WORK_DIR,
    data_path=None,
    retry_failed=False,
    unit_timeout=None,
    threads=None,
    echo=print,
):
    """Run every unit not yet in the raw file, one at a time; return the counts."""
    path = raw_path(results_dir, dataset, protocol["name"])
    checkpoint_dir = (
        Path(work_dir) / "checkpoints" / f"{dataset}.{protocol['name']}"
    ).resolve()
    carry_dir = carry_path(results_dir, dataset, protocol["name"]).resolve()
    to_run, skipped = plan_units(
        dataset,
        models,
        n_seeds,
        protocol,
        read_raw(path),
        retry_failed,
        checkpoint_dir=checkpoint_dir,
        carry_dir=carry_dir,
    )
    for unit in skipped:
        echo(f"skip {unit['model']} seed {unit['seed']}: already in {_relative(path)}")
    work_dir = Path(work_dir)
    threads = threads if threads is not None else protocol.get("threads")
    counts = {"run": 0, "skipped": len(skipped), "ok": 0, "not_ok": 0}
    for number, unit in enumerate(to_run, 1):
        spec = dict(unit)
        spec["checkpoint_dir"] = str(checkpoint_dir)
        spec["carry_dir"] = str(carry_dir)
        spec["data_path"] = data_path
        spec["threads"] = threads
        spec["score_inference_steps"] = protocol.get("score_inference_steps") or []
        spec["progress_file"] = str(progress_path(results_dir, unit))
        holder = _claim_unit(spec)
        if holder is not None:
            echo(
                f"skip {unit['model']} seed {unit['seed']}: running in process {holder}"
            )
            counts["skipped"] += 1
            continue
        try:
            log_path = _unit_log_path(work_dir, spec)
            echo(
                f"[{number}/{len(to_run)}] {dataset} {protocol['name']} {unit['model']} "
                f"seed {unit['seed']} (log: {_relative(log_path)})"
            )
            state_before = _resume_state_stamp(spec)
            start = time.perf_counter()
            started_at = now_iso()
            result, code, error = run_child(
                "unit", spec, log_path, work_dir, unit_timeout
            )
            wall = time.perf_counter() - start
            if result is None:
                result = {
                    "schema": SCHEMA_VERSION,
                    "kind": "unit",
                    **{k: unit[k] for k in unit},
                    "status": TIMEOUT if code is None else CRASHED,
                    "error": error,
                    "started_at": started_at,
                    "finished_at": now_iso(),
                }
            result["wall_seconds"] = wall
            result["exit_code"] = code
            result["log"] = _relative(log_path)
            append_raw(path, result)
            if result["status"] in (OK, DIVERGED):
                # finished for good: a rerun starts afresh only with --retry-failed
                _unit_files_done(spec)
            elif result["status"] == FAILED:
                # the resume state stays for --retry-failed; the page lists the
                # unit as failed, not as running
                Path(spec["progress_file"]).unlink(missing_ok=True)
                if (
                    state_before is not None
                    and _resume_state_stamp(spec) == state_before
                ):
                    # failed again before finishing an epoch past its resume
                    # state: the state itself may be the cause (a damaged file,
                    # renamed parameters), so the next retry starts afresh
                    _unit_files_done(spec)
                    echo("    its resume state led to no new epoch: removed")
            counts["run"] += 1
            if result["status"] == OK:
                counts["ok"] += 1
                metrics = result.get("metrics", {})
                echo(
                    f"    ok in {wall:.0f} s: NDCG@10 {metrics.get('ndcg@10', float('nan')):.4f}"
                    f", best epoch {result.get('best_epoch')}"
                )
            else:
                counts["not_ok"] += 1
                echo(f"    {result['status']}: {str(result.get('error'))[:300]}")
        finally:
            _unit_file(spec["checkpoint_dir"], spec, ".lock").unlink(missing_ok=True)
    return counts
