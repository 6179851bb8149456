"""What a page says about training itself: units still running, why each unit
stopped, learning curves, and what the diffusion adds (the ablations).

Used by ``page.render_page`` for every protocol; the sections appear when the
records carry what they need (``stop_reason``, ``test_by_inference_steps``,
ablation variants, progress files), which the ``converged`` protocol's units
do.
"""

import re

from benchmarks.raw import OK, latest_records
from benchmarks.report.records import model_sort_key
from benchmarks.report.stats import paired_ttest
from benchmarks.report.tables import METRIC_LABELS, fmt_metric, markdown_table

__all__ = [
    "ablation_parent",
    "is_ablation",
    "running_section",
    "stopping_section",
    "diffusion_adds_section",
    "render_curves",
    "unit_curve",
]

# ``<Model>-Lambda<value>``: the model with another weight of its noised target.
_ABLATION = re.compile(r"^(?P<parent>.+)-Lambda(?P<value>[0-9.]+)$")
# The parameter each ablation changes, by parent model.
ABLATION_KEYS = {
    "DiffuRec": "lambda_uncertainty",
    "DiffuRecSys": "lambda_uncertainty",
    "ADRec": "lambda_scale",
}
PAPER_LAMBDA = 0.001
COMPARED_METRICS = ("ndcg@10", "hit@10")


def ablation_parent(model):
    """The model an ablation variant changes (``ADRec`` for ``ADRec-Lambda0``)."""
    match = _ABLATION.match(model)
    return match.group("parent") if match else None


def is_ablation(model):
    return ablation_parent(model) is not None


def _ablation_value(model):
    return float(_ABLATION.match(model).group("value"))


# --------------------------------------------------------------------------- #
# units in progress
# --------------------------------------------------------------------------- #
def running_units(records, progress):
    """Progress records of units with no finished (ok) record of the same protocol."""
    latest = latest_records(records)
    running = []
    for entry in progress:
        prior = latest.get((entry["model"], entry["seed"]))
        done = (
            prior is not None
            and prior.get("status") == OK
            and prior.get("fingerprint") == entry.get("fingerprint")
        )
        if not done:
            running.append(entry)
    return sorted(running, key=lambda e: (model_sort_key(e["model"]), e["seed"]))


def running_section(records, progress):
    running = running_units(records, progress)
    if not running:
        return []
    lines = [
        "## Units in progress",
        "",
        "Interrupted or still training; rerunning the benchmark command continues "
        "each from its last epoch. Not in the tables above until they finish.",
        "",
    ]
    for entry in running:
        stage = f" (stage {entry['stage']})" if entry.get("stage") is not None else ""
        best = entry.get("best_valid_so_far")
        best_text = "–" if best is None else f"{best:.4f}"
        lines.append(
            f"- {entry['model']} seed {entry['seed']}: running: epoch "
            f"{entry['epochs_trained']}{stage}, best valid NDCG@10 so far {best_text} "
            f"(updated {entry.get('updated_at', '?')})"
        )
    lines.append("")
    return lines


# --------------------------------------------------------------------------- #
# why units stopped
# --------------------------------------------------------------------------- #
def stopping_section(units):
    """Per unit: epochs run, best epoch and why training stopped."""
    finished = [u for u in units if u.get("status") == OK and "stop_reason" in u]
    if not finished:
        return []
    early = sum(1 for u in finished if u["stop_reason"] == "early_stopping")
    lines = [
        "## How each unit stopped",
        "",
        f"{early} of {len(finished)} finished units stopped early (validation "
        "NDCG@10 stopped improving); the others used the whole epoch budget and may "
        "still have been improving. ADRec counts as stopped early when both its "
        "pre-training and its joint training did (the warm-up has a fixed length).",
        "",
    ]
    rows = []
    for unit in sorted(finished, key=lambda u: (model_sort_key(u["model"]), u["seed"])):
        reasons = unit.get("stop_reasons") or {}
        if len(reasons) > 1:
            detail = ", ".join(
                f"stage {stage}: {reason.replace('_', ' ')}"
                for stage, reason in sorted(reasons.items())
            )
        else:
            detail = unit["stop_reason"].replace("_", " ")
        best = unit.get("best_epoch")
        if unit.get("best_stage") is not None:
            best = f"{best} (stage {unit['best_stage']})"
        rows.append(
            [
                unit["model"],
                unit["seed"],
                unit.get("epochs_trained", "–"),
                best,
                detail,
                unit.get("resumed", 0),
            ]
        )
    lines += markdown_table(
        ["model", "seed", "epochs run", "best epoch", "stopped by", "resumes"], rows
    )
    lines.append("")
    return lines


# --------------------------------------------------------------------------- #
# what the diffusion adds
# --------------------------------------------------------------------------- #
def _paired_text(test, metric):
    if test["p"] is None:
        if test["mean_diff"] is None:
            return f"n/a ({test['note']})"
        return f"{test['mean_diff']:+.4f} (no test: {test['note']})"
    return f"{test['mean_diff']:+.4f} (t {test['t']:.2f}, p {test['p']:.3f})"


def _plain_words(variant, parent, test):
    if test["p"] is None:
        return "too few paired seeds to test"
    two_sided = min(1.0, 2 * min(test["p"], 1 - test["p"]))
    if two_sided >= 0.05:
        return f"no significant difference from {parent} (two-sided p {two_sided:.2f})"
    direction = "better" if test["mean_diff"] > 0 else "worse"
    return f"{direction} than {parent} (two-sided p {two_sided:.3f})"


def diffusion_adds_section(summary):
    """Each ablation against its parent, and every model at 1, 4 and 32 steps."""
    lines = []
    pairs = [
        (variant, ablation_parent(variant))
        for variant in summary
        if is_ablation(variant) and ablation_parent(variant) in summary
    ]
    by_steps = {model: s for model, s in summary.items() if _steps_metrics(s["units"])}
    if not pairs and not by_steps:
        return []
    lines += [
        "## What the diffusion adds",
        "",
        "Each variant changes one thing of its parent model: the weight lambda "
        f"with which the noised target enters the approximator (the papers' "
        f"{PAPER_LAMBDA}; lambda = 0 removes the noised target, so the model "
        "is its history encoder and approximator alone). Paired by seed, "
        "`scipy.stats.ttest_rel`; the column gives the mean difference variant - "
        "parent with t and the one-sided p of H1: variant > parent.",
        "",
    ]
    if pairs:
        rows = []
        for variant, parent in sorted(pairs, key=lambda p: (p[1], p[0])):
            key = ABLATION_KEYS.get(parent, "lambda")
            tests = {
                m: paired_ttest(
                    summary[variant]["values"][m], summary[parent]["values"][m]
                )
                for m in COMPARED_METRICS
            }
            rows.append(
                [
                    variant,
                    f"{key} {_ablation_value(variant):g}",
                    fmt_metric(
                        summary[variant]["mean"]["ndcg@10"],
                        summary[variant]["std"]["ndcg@10"],
                    ),
                    fmt_metric(
                        summary[parent]["mean"]["ndcg@10"],
                        summary[parent]["std"]["ndcg@10"],
                    ),
                    *(_paired_text(tests[m], m) for m in COMPARED_METRICS),
                    _plain_words(variant, parent, tests["ndcg@10"]),
                ]
            )
        lines += markdown_table(
            [
                "variant",
                "changes",
                "NDCG@10",
                "parent NDCG@10",
                *(f"{METRIC_LABELS[m]} diff" for m in COMPARED_METRICS),
                "in plain words",
            ],
            rows,
        )
        lines.append("")
    if by_steps:
        step_counts = sorted(
            {int(k) for s in by_steps.values() for k in _steps_metrics(s["units"])}
        )
        lines += [
            "Reverse steps at inference: the same trained models (each unit's chosen "
            "checkpoint) tested with 1, 4 and 32 steps of the reverse chain (the "
            "papers run all T). Test NDCG@10, mean ± std over seeds:",
            "",
        ]
        rows = []
        for model in sorted(by_steps, key=model_sort_key):
            per_step = _steps_metrics(by_steps[model]["units"])
            cells = []
            for count in step_counts:
                values = per_step.get(str(count), [])
                mean = sum(values) / len(values) if values else None
                std = (
                    (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
                    if len(values) > 1
                    else None
                )
                cells.append(fmt_metric(mean, std))
            rows.append([model, *cells])
        lines += markdown_table(["model", *(f"{c} steps" for c in step_counts)], rows)
        lines.append("")
    return lines


def _steps_metrics(units):
    """{steps: [test NDCG@10 of each unit]} from ``test_by_inference_steps``."""
    values = {}
    for unit in units:
        for count, metrics in (unit.get("test_by_inference_steps") or {}).items():
            if metrics.get("ndcg@10") is not None:
                values.setdefault(count, []).append(metrics["ndcg@10"])
    return values


# --------------------------------------------------------------------------- #
# learning curves
# --------------------------------------------------------------------------- #
def unit_curve(unit):
    """(epochs, cumulative training seconds, valid NDCG@10) of one unit.

    Epochs are counted over all stages of a multi-stage trainer (ADRec's
    stage 2 starts after stage 1's last epoch); the seconds are training
    seconds (``epoch_seconds``), summed.
    """
    curve = unit.get("valid_curve") or []
    seconds = unit.get("epoch_seconds") or []
    epochs, elapsed, scores = [], [], []
    total = 0.0
    for index, entry in enumerate(curve):
        total += seconds[index] if index < len(seconds) else 0.0
        epochs.append(index + 1)
        elapsed.append(total)
        scores.append(entry[1])
    return epochs, elapsed, scores


def render_curves(units, running, path, title):
    """Validation NDCG@10 against epoch and against training seconds.

    One line per unit (finished: solid; still running: dashed), one colour
    per model. Ablation variants are left out (their parents show the shape).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [u for u in units if u.get("status") == OK and not is_ablation(u["model"])]
    shown += [dict(r, running=True) for r in running if not is_ablation(r["model"])]
    if not shown:
        return False
    models = sorted({u["model"] for u in shown}, key=model_sort_key)
    colours = plt.get_cmap("tab10")
    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for unit in shown:
        epochs, elapsed, scores = unit_curve(unit)
        if not scores:
            continue
        colour = colours(models.index(unit["model"]) % 10)
        style = "--" if unit.get("running") else "-"
        for axis, xs in ((by_epoch, epochs), (by_time, elapsed)):
            axis.plot(xs, scores, style, color=colour, linewidth=1.2, alpha=0.85)
    for model in models:
        by_epoch.plot([], [], color=colours(models.index(model) % 10), label=model)
    by_epoch.set_xlabel("epoch (all stages of ADRec in sequence)")
    by_time.set_xlabel("cumulative training seconds (log scale)")
    by_time.set_xscale("log")
    by_epoch.set_ylabel("validation NDCG@10")
    for axis in (by_epoch, by_time):
        axis.grid(True, alpha=0.3)
    by_epoch.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{title}: one line per unit (dashed: still running)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
