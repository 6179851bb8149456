"""The raw results file: one JSON record per unit, appended as each unit ends.

``results/raw/<dataset>.<protocol>.jsonl`` is the single source of every page.
A retried unit appends a new record; the newest record of a (model, seed) counts.
"""

import datetime
import json
import os
import sys
from pathlib import Path

from benchmarks.protocol import BENCH_DIR

__all__ = [
    "CRASHED",
    "DEFAULT_RESULTS_DIR",
    "DIVERGED",
    "FAILED",
    "OK",
    "SCHEMA_VERSION",
    "TIMEOUT",
    "append_raw",
    "latest_records",
    "now_iso",
    "raw_path",
    "read_raw",
]

DEFAULT_RESULTS_DIR = BENCH_DIR / "results"
SCHEMA_VERSION = 1

# A unit's status in its record.
OK = "ok"
FAILED = "failed"
DIVERGED = "diverged"
CRASHED = "crashed"
TIMEOUT = "timeout"


def now_iso():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


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


def compare_raw_path(results_dir=DEFAULT_RESULTS_DIR):
    """The raw file of the side-by-side step timings (``benchmarks.speed_compare``)."""
    return Path(results_dir) / "raw" / "speed_compare.jsonl"
