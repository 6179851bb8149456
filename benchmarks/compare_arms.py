"""Compare one model's results between two sets of units, unpaired.

Two arms of a check, each a list of raw files (the units of one setting, for
example a speed-up on and off, perhaps run under several protocol files):

    python -m benchmarks.compare_arms --model=CDDRec \\
        --arm-a=benchmarks/results/fast-paths/raw/ml-100k.cpu.jsonl \\
        --arm-b=benchmarks/results/fast-paths/raw/ml-100k.cpu-slow-paths.jsonl

Each arm's finished units of the model (the newest record per seed) give one
value per seed. Different settings draw different random numbers, so seed s of
one arm is no more related to seed s of the other than to any other seed: the
arms are compared unpaired, by Welch's t-test and the Mann-Whitney U test
(two-sided). Prints a Markdown table: per metric, each arm's n, mean and sample
standard deviation, the difference of the means, and both p-values; then the
values per seed.
"""

import argparse
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.raw import OK, latest_records, read_raw  # noqa: E402

__all__ = ["arm_values", "compare", "main"]

DEFAULT_METRICS = ("test:ndcg@10", "test:hit@10", "valid:ndcg@10")
_SPLITS = {"test": "metrics", "valid": "valid_metrics"}


def _metric_key(metric):
    """(record field, metric name) of ``test:ndcg@10`` or ``valid:...``."""
    split, _, name = metric.partition(":")
    if split not in _SPLITS or not name:
        raise ValueError(f"metric {metric!r} must be test:<name> or valid:<name>")
    return _SPLITS[split], name


def arm_values(paths, model, metric):
    """{seed: value} of ``metric`` (``test:ndcg@10`` or ``valid:...``) over the
    finished units of ``model`` in ``paths``. A later file's unit replaces an
    earlier one's of the same seed (a later failed unit removes it). Raises
    ValueError for an unknown metric or units of more than one dataset."""
    field, name = _metric_key(metric)
    records = {}
    for path in paths:
        for (record_model, seed), record in latest_records(read_raw(path)).items():
            if record_model == model:
                records[seed] = record
    datasets = {record.get("dataset") for record in records.values()}
    if len(datasets) > 1:
        raise ValueError(f"units of several datasets: {sorted(map(str, datasets))}")
    values = {}
    for seed, record in records.items():
        if record.get("status") == OK:
            if name not in record[field]:
                raise ValueError(f"metric {metric!r} not in the records")
            values[seed] = record[field][name]
    return values


def compare(values_a, values_b):
    """Means, standard deviations and unpaired two-sided p-values of two arms."""
    from scipy.stats import mannwhitneyu, ttest_ind

    a, b = list(values_a), list(values_b)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(
            f"each arm needs at least 2 values (found {len(a)} and {len(b)})"
        )
    return {
        "n": (len(a), len(b)),
        "mean": (statistics.mean(a), statistics.mean(b)),
        "std": (statistics.stdev(a), statistics.stdev(b)),
        "difference": statistics.mean(a) - statistics.mean(b),
        "welch_p": float(ttest_ind(a, b, equal_var=False).pvalue),
        "mann_whitney_p": float(mannwhitneyu(a, b, alternative="two-sided").pvalue),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--arm-a", required=True, help="comma-separated raw files")
    parser.add_argument("--arm-b", required=True, help="comma-separated raw files")
    parser.add_argument("--names", default="A,B", help="the two arms' names")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    args = parser.parse_args(argv)
    arms = [args.arm_a.split(","), args.arm_b.split(",")]
    for path in arms[0] + arms[1]:
        if not Path(path).is_file():
            parser.exit(2, f"error: raw file not found: {path}\n")
    names = args.names.split(",")
    if len(names) != 2:
        parser.exit(2, "error: --names takes two names, comma-separated\n")
    name_a, name_b = names
    print(
        f"| metric | {name_a} n | {name_a} mean ± std | {name_b} n | {name_b} mean ± std "
        f"| difference | Welch p | Mann-Whitney p |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    per_seed = {}
    for metric in args.metrics.split(","):
        try:
            values = [arm_values(paths, args.model, metric) for paths in arms]
            result = compare(values[0].values(), values[1].values())
        except ValueError as error:
            parser.exit(2, f"error: {metric}: {error}\n")
        per_seed[metric] = values
        (n_a, n_b), (mean_a, mean_b), (std_a, std_b) = (
            result["n"],
            result["mean"],
            result["std"],
        )
        print(
            f"| {metric} | {n_a} | {mean_a:.4f} ± {std_a:.4f} | {n_b} | {mean_b:.4f} ± "
            f"{std_b:.4f} | {result['difference']:+.4f} | {result['welch_p']:.3f} "
            f"| {result['mann_whitney_p']:.3f} |"
        )
    print()
    for metric, values in per_seed.items():
        for name, arm in zip((name_a, name_b), values):
            listed = ", ".join(
                f"{seed}: {value:.4f}" for seed, value in sorted(arm.items())
            )
            print(f"- {metric}, {name}: {listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
