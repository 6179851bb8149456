"""Equivalence: our model and the reference code, same weights, same draws.

Each check builds our model from its property file with tiny sizes (both
sides in ``eval`` mode, so dropout is inactive), builds the reference's model
from its checkout, copies our weights into it
(:mod:`benchmarks.parity.mapping`), feeds both the same histories and the
same random draws (:class:`~benchmarks.parity.draws.InjectedDraws`) and
records the largest absolute difference of what they compute. A documented
deviation is either switched to the reference's behaviour for the check or
avoided by the choice of inputs; each record's ``note`` says which.

Inputs are full-length histories (no padding) unless a note says otherwise:
the reference codes pad on the left and read position -1, ours pads on the
right and reads ``item_seq_len - 1``; without padding the two layouts are the
same array.

Run ``python -m benchmarks.parity.equivalence --model=DiffuRec
--reference-dir=/tmp/refs/DiffuRec`` (see ``--help``); records are appended
to ``benchmarks/results/raw/parity.jsonl``.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from benchmarks.parity.check_adrec import check_adrec
from benchmarks.parity.check_cddrec import check_cddrec
from benchmarks.parity.check_diffurec import check_diffurec, check_diffurecsys
from benchmarks.parity.compare import SIZES, TARGET
from benchmarks.parity.reference import REFERENCES, checkout_commit

__all__ = [
    "CHECKS",
    "DEFAULT_OUTPUT",
    "TARGET",
    "append_records",
    "main",
    "run_equivalence",
]

CHECKS = {
    "DiffuRec": check_diffurec,
    "DiffuRecSys": check_diffurecsys,
    "CDDRec": check_cddrec,
    "ADRec": check_adrec,
}

DEFAULT_OUTPUT = (
    Path(__file__).resolve().parents[1] / "results" / "raw" / "parity.jsonl"
)


def run_equivalence(model, reference_dir, seed=0, dtype=torch.float32):
    """The equivalence records of ``model`` against the checkout ``reference_dir``.

    Raises:
        ValueError: ``reference_dir`` is a git checkout at another commit
            than the pinned one.
    """
    reference = REFERENCES[model]
    commit = checkout_commit(reference_dir)
    if commit is not None and commit != reference.commit:
        raise ValueError(
            f"{reference_dir} is at {commit}, not the pinned {reference.commit}: "
            f"run git -C {reference_dir} checkout {reference.commit}"
        )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # our models' initialisation
        comparisons = CHECKS[model](reference_dir, dict(SIZES), generator)
    finally:
        torch.set_default_dtype(previous)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    verified = commit is not None
    records = []
    for result in comparisons:
        record = {
            "model": model,
            "kind": "equivalence",
            "side": "ours",
            "quantity": result["quantity"],
            "max_abs_diff": result["max_abs_diff"],
            "reference_repo": reference.repository,
            "reference_commit": commit or reference.commit,
            "commit_verified": verified,
            "note": result["note"],
            "expected_equal": result["expected_equal"],
            "within_target": result["max_abs_diff"] <= TARGET,
            "scale": result["scale"],
            "dtype": str(dtype).removeprefix("torch."),
            "seed": seed,
            "torch": torch.__version__,
            "date": date,
        }
        if "top10_identical" in result:
            record["top10_identical"] = result["top10_identical"]
        records.append(record)
    return records


def append_records(records, path=DEFAULT_OUTPUT):
    """Append ``records`` to the jsonl file ``path`` (created if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.parity.equivalence",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--model", required=True, choices=sorted(CHECKS))
    parser.add_argument(
        "--reference-dir",
        required=True,
        help="a checkout of the model's reference repository at the pinned commit",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument(
        "--output", default=str(DEFAULT_OUTPUT), help="jsonl to append to"
    )
    parser.add_argument("--dry-run", action="store_true", help="print, do not append")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    records = run_equivalence(
        args.model, args.reference_dir, args.seed, getattr(torch, args.dtype)
    )
    for record in records:
        flag = (
            "ok "
            if record["within_target"]
            else ("dev" if not record["expected_equal"] else "MISS")
        )
        print(f"{flag} {record['max_abs_diff']:.3e}  {record['quantity']}")
    if not args.dry_run:
        append_records(records, args.output)
        print(f"{len(records)} records appended to {args.output}")
    misses = [r for r in records if r["expected_equal"] and not r["within_target"]]
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
