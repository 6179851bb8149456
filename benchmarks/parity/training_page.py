"""The training-parity half of ``parity.md``: curves, means and the verdict.

Reads the ``kind: training`` records of ``raw/parity.jsonl`` (written by
:mod:`benchmarks.parity.training`). Per model, the latest comparison (its
settings fingerprint) is shown: each run's test metrics, each side's mean and
standard deviation over seeds, the ratio ours / reference, whether the means
agree within noise (within 10% of the reference's mean, or within 2 pooled
standard deviations), the per-epoch validation NDCG@10 of both sides, and a
figure of the curves.
"""

import math
import statistics
from pathlib import Path

__all__ = [
    "RELATIVE_TOLERANCE",
    "latest_comparison",
    "summarise",
    "training_section",
    "training_summary",
    "within_noise",
    "write_curves",
]

RELATIVE_TOLERANCE = 0.10
POOLED_SDS = 2.0
METRICS = ("ndcg@10", "hit@10", "ndcg@20", "hit@20")


def latest_comparison(records, model):
    """The training records of ``model``'s latest settings, in file order."""
    runs = [
        r
        for r in records
        if r.get("kind") == "training"
        and r.get("model") == model
        and not r.get("variant")
    ]
    if not runs:
        return []
    latest = max(runs, key=lambda r: r.get("finished_at", ""))["fingerprint"]
    return [r for r in runs if r["fingerprint"] == latest]


def _mean_sd(values):
    values = [float(v) for v in values]
    if not values:
        return None, None
    sd = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), sd


def within_noise(ours, reference):
    """(verdict, reason) for two lists of per-seed values of one metric."""
    ours_mean, ours_sd = _mean_sd(ours)
    ref_mean, ref_sd = _mean_sd(reference)
    if ours_mean is None or ref_mean is None:
        return None, "one side has no run"
    gap = abs(ours_mean - ref_mean)
    relative = gap / ref_mean if ref_mean else (0.0 if gap == 0 else math.inf)
    if relative <= RELATIVE_TOLERANCE:
        return True, f"{relative:.1%} apart (within {RELATIVE_TOLERANCE:.0%})"
    if ours_sd is not None and ref_sd is not None:
        pooled = math.sqrt((ours_sd**2 + ref_sd**2) / 2)
        if pooled > 0 and gap <= POOLED_SDS * pooled:
            return True, f"{gap / pooled:.1f} pooled sd apart (within {POOLED_SDS:g})"
        return (
            False,
            f"{relative:.1%} and {gap / pooled:.1f} pooled sd apart"
            if pooled
            else (f"{relative:.1%} apart"),
        )
    return False, f"{relative:.1%} apart, too few seeds for a standard deviation"


def summarise(runs):
    """``{side: {metric: (mean, sd, n)}}`` over seeds."""
    summary = {}
    for side in ("reference", "ours"):
        side_runs = [r for r in runs if r["side"] == side]
        summary[side] = {}
        for metric in METRICS:
            values = [r["test"][metric] for r in side_runs if metric in r["test"]]
            mean, sd = _mean_sd(values)
            summary[side][metric] = (mean, sd, len(values))
    return summary


def _fmt(mean, sd):
    if mean is None:
        return "–"
    return f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")


def _epoch_means(runs, side):
    by_epoch = {}
    for run in runs:
        if run["side"] != side:
            continue
        for epoch, value in run.get("valid_curve", []):
            by_epoch.setdefault(int(epoch), []).append(float(value))
    return {epoch: statistics.fmean(values) for epoch, values in by_epoch.items()}


def write_curves(runs, model, path):
    """Validation NDCG@10 per epoch of every run, both sides; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    colours = {"reference": "tab:orange", "ours": "tab:blue"}
    for run in runs:
        curve = run.get("valid_curve") or []
        if not curve:
            continue
        epochs, values = zip(*[(e, v) for e, v in curve])
        axis.plot(
            epochs,
            values,
            color=colours[run["side"]],
            linestyle="--" if run["side"] == "reference" else "-",
            marker=".",
            label=f"{run['side']} seed {run['seed']}",
        )
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation NDCG@10")
    axis.set_title(f"{model}: ours and the reference code, same data and budget")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _variant_lines(records, model, main_runs):
    """Runs of changed settings, each beside the main run of its side and seed."""
    variants = [
        r
        for r in records
        if r.get("kind") == "training" and r.get("model") == model and r.get("variant")
    ]
    if not variants:
        return []
    main = {(r["side"], r["seed"]): r for r in main_runs}
    lines = [
        "",
        "Variants (one setting changed; the same seed's main run beside it):",
        "",
        "| variant | change | side | seed | test NDCG@10 | main run's | "
        "last valid NDCG@10 | main run's |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in variants:
        base = main.get((run["side"], run["seed"]))
        change = ", ".join(f"{k}: {v}" for k, v in run.get("options", {}).items())

        def last_valid(r):
            curve = (r or {}).get("valid_curve") or []
            return f"{curve[-1][1]:.4f}" if curve else "–"

        base_test = f"{base['test']['ndcg@10']:.4f}" if base else "–"
        lines.append(
            f"| {run['variant']} | {change} | {run['side']} | {run['seed']} | "
            f"{run['test']['ndcg@10']:.4f} | {base_test} | {last_valid(run)} | "
            f"{last_valid(base)} |"
        )
    lines += ["", "Their validation NDCG@10 after each epoch:", ""]
    for run in variants:
        curve = ", ".join(f"{value:.4f}" for _, value in run.get("valid_curve") or [])
        first = (run.get("valid_curve") or [[None]])[0][0]
        lines.append(
            f"- {run['variant']}, {run['side']}, seed {run['seed']} "
            f"(from epoch {first}): {curve or '–'}"
        )
    return lines


def training_summary(records, models=None):
    """One row per model: test NDCG@10 of both sides, the ratio, the verdict."""
    models = models or sorted(
        {r["model"] for r in records if r.get("kind") == "training"}
    )
    rows = []
    for model in models:
        runs = latest_comparison(records, model)
        if not runs:
            continue
        summary = summarise(runs)
        ref_mean, ref_sd, ref_n = summary["reference"]["ndcg@10"]
        our_mean, our_sd, our_n = summary["ours"]["ndcg@10"]
        verdict, reason = within_noise(
            [r["test"]["ndcg@10"] for r in runs if r["side"] == "ours"],
            [r["test"]["ndcg@10"] for r in runs if r["side"] == "reference"],
        )
        ratio = (
            f"{our_mean / ref_mean:.3f}" if ref_mean and our_mean is not None else "–"
        )
        epochs = max((r.get("epochs_trained") or 0) for r in runs)
        word = {True: "yes", False: "**no**", None: "–"}[verdict]
        rows.append(
            f"| {model} | `{runs[0]['data']['source']}` | {epochs} | "
            f"{_fmt(ref_mean, ref_sd)} ({ref_n}) | {_fmt(our_mean, our_sd)} ({our_n}) | "
            f"{ratio} | {word}: {reason} |"
        )
    if not rows:
        return []
    return [
        "| model | reference's data | epochs | reference test NDCG@10 (seeds) | "
        "ours (seeds) | ours / reference | within noise |",
        "|---|---|---:|---:|---:|---:|---|",
        *rows,
        "",
    ]


def training_section(records, model, page_dir=None):
    """Markdown lines for ``model``'s training parity (and its figure)."""
    command = (
        f"`python -m benchmarks.parity.training --model={model} "
        f"--reference-dir=/tmp/refs/{model}`"
    )
    runs = latest_comparison(records, model)
    if not runs:
        return [
            f"Training parity ({command}): not yet measured.",
            "",
        ]
    first = max(runs, key=lambda r: r.get("finished_at", ""))
    data = first["data"]
    settings = ", ".join(f"{k} {v}" for k, v in first["settings"].items())
    notes = first.get("protocol", [])
    try:  # the recipe's notes as the code now states them
        from benchmarks.parity.training import recipe

        notes = recipe(model).PROTOCOL[model]
    except (ImportError, KeyError, ValueError):
        pass
    lines = [
        f"### Training parity ({command})",
        "",
        f"- Data: the reference's `{data['source']}` ({data['users']:,} users, "
        f"{data['items']:,} items, {data['interactions']:,} interactions), written "
        f"as RecBole atomic files with its leave-one-out split"
        + (
            f", each user's last {data['keep_last']} items kept"
            if data.get("keep_last")
            else ""
        )
        + ".",
        f"- Settings, the same on both sides: {settings}; validation after every "
        "epoch, no early stopping.",
        "- How the two differ in evaluation and training:",
    ]
    lines += [f"  - {note}" for note in notes]
    lines += [
        "",
        "| side | seed | test NDCG@10 | test HR@10 | test NDCG@20 | test HR@20 | "
        "best epoch | epochs | training s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in sorted(runs, key=lambda r: (r["side"] != "reference", r["seed"])):
        test = run["test"]
        lines.append(
            f"| {run['side']} | {run['seed']} | "
            + " | ".join(f"{test[m]:.4f}" if m in test else "–" for m in METRICS)
            + f" | {run.get('best_epoch', '–')} | {run.get('epochs_trained', '–')} | "
            f"{run.get('train_seconds', 0):.0f} |"
        )
    summary = summarise(runs)
    lines += [
        "",
        "| metric | reference mean ± sd | ours mean ± sd | ours / reference | within noise |",
        "|---|---:|---:|---:|---|",
    ]
    for metric in METRICS:
        ref_mean, ref_sd, _ = summary["reference"][metric]
        our_mean, our_sd, _ = summary["ours"][metric]
        ratio = (
            f"{our_mean / ref_mean:.3f}" if ref_mean and our_mean is not None else "–"
        )
        verdict, reason = within_noise(
            [
                r["test"][metric]
                for r in runs
                if r["side"] == "ours" and metric in r["test"]
            ],
            [
                r["test"][metric]
                for r in runs
                if r["side"] == "reference" and metric in r["test"]
            ],
        )
        word = {True: "yes", False: "**no**", None: "–"}[verdict]
        lines.append(
            f"| {metric} | {_fmt(ref_mean, ref_sd)} | {_fmt(our_mean, our_sd)} | "
            f"{ratio} | {word}: {reason} |"
        )
    reference_curve = _epoch_means(runs, "reference")
    our_curve = _epoch_means(runs, "ours")
    epochs = sorted(set(reference_curve) | set(our_curve))
    if epochs:
        lines += [
            "",
            "Validation NDCG@10 after each epoch, mean over seeds:",
            "",
            "| epoch | " + " | ".join(str(e) for e in epochs) + " |",
            "|---|" + "---:|" * len(epochs),
        ]
        for side, curve in (("reference", reference_curve), ("ours", our_curve)):
            lines.append(
                f"| {side} | "
                + " | ".join(f"{curve[e]:.4f}" if e in curve else "–" for e in epochs)
                + " |"
            )
    lines += _variant_lines(records, model, runs)
    if page_dir is not None:
        name = f"parity.{model}.curves.png"
        write_curves(runs, model, Path(page_dir) / name)
        lines += ["", f"![{model} validation curves]({name})"]
    lines.append("")
    return lines
