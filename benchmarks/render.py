"""Render a dataset's results page and plot from its raw results file alone.

    python benchmarks/render.py --dataset=ml-100k [--protocol=cpu]
    python benchmarks/render.py --speed

writes ``benchmarks/results/<dataset>.md`` and ``<dataset>.png`` (for a
protocol other than ``cpu``: ``<dataset>.<protocol>.md`` / ``.png``), and
``benchmarks/results/speed.md`` from ``raw/speed.jsonl``.

Conventions of the page: mean ± sample standard deviation (ddof 1) over the
seeds; per column the best mean in bold and the second underlined; the
improvement row compares the best diffusion model with the best baseline per
column; the paired t-test (``scipy.stats.ttest_rel`` over the seeds, paired
by seed) is one-sided, H1: the diffusion model's mean is greater than the
best baseline's (the baseline with the highest mean NDCG@10).
"""

import argparse
import datetime
import statistics
import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: E402
    DEFAULT_PROTOCOL,
    DEFAULT_RESULTS_DIR,
    METRICS,
    OK,
    PROJECT_ROOT,
    _relative,
    is_diffusion,
    latest_records,
    raw_path,
    read_raw,
)

__all__ = [
    "MODEL_ORDER",
    "REFERENCES",
    "improvement",
    "mark_best",
    "paired_ttest",
    "most_at_once",
    "render_page",
    "render_speed",
    "summarize",
    "write_page",
    "write_speed",
]

# The README shows the committed pages' tables between markers.
README_PATH = PROJECT_ROOT / "README.md"

MODEL_ORDER = [
    "GRU4Rec",
    "SASRec",
    "BERT4Rec",
    "DuoRec",
    "DiffuRec",
    "DiffuRecSys",
    "CDDRec",
    "ADRec",
]
METRIC_LABELS = {
    "hit@5": "HR@5",
    "hit@10": "HR@10",
    "hit@20": "HR@20",
    "ndcg@5": "NDCG@5",
    "ndcg@10": "NDCG@10",
    "ndcg@20": "NDCG@20",
    "mrr@20": "MRR@20",
}
TTEST_METRICS = ("ndcg@10", "hit@10", "ndcg@20", "hit@20")
SELECTION_METRIC = "ndcg@10"
# Resolved hyperparameters shown per model in the settings.
SHOWN_KEYS = (
    "MAX_ITEM_LIST_LENGTH",
    "hidden_size",
    "n_layers",
    "train_batch_size",
    "learning_rate",
    "weight_decay",
    "epochs",
    "stopping_step",
    "lr_scheduler",
)

# Published numbers, copied from /work/shared/docs/REFERENCE_RESULTS.md
# (leave-one-out, full ranking; the papers' own settings, not this protocol).
_DIFFURECSYS = (
    "DiffuRecSys paper (Zolghadr et al., RecSys 2024 workshop), Tables 3 and 5, "
    "mean of 5 runs, same sequences as our files"
)
_CDDREC = (
    "CDDRec paper (Wang et al.), Table 2 (Recall@k is HR@k; MRR not truncated), "
    "same sequences as our files"
)
_HR_NDCG = ("hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20")
_DIFFURECSYS_MODELS = (
    "GRU4Rec",
    "SASRec",
    "BERT4Rec",
    "DuoRec",
    "DiffuRec",
    "DiffuRecSys-V1",
    "DiffuRecSys",
)


def _diffurecsys_rows(columns):
    """{model: {metric: value}} from one dataset's columns (HR@5..NDCG@20 rows)."""
    return {
        model: dict(zip(_HR_NDCG, values))
        for model, values in zip(_DIFFURECSYS_MODELS, zip(*columns))
    }


def _cddrec_rows(rows):
    """{model: {metric: value}} from (R@5, R@10, N@5, N@10) tuples."""
    metrics = ("hit@5", "hit@10", "ndcg@5", "ndcg@10")
    return {model: dict(zip(metrics, values)) for model, values in rows.items()}


# The ADRec paper reports relative gains only (Beauty, Toys and ML-100K are among
# its six datasets, in a smaller 5-core preparation than ours).
_ADREC = "ADRec paper (summary in `docs/REFERENCE_RESULTS.md`)"
ADREC_CLAIM = {"hit@20": 0.1545, "ndcg@20": 0.1302}
ADREC_CLAIM_DATASETS = ("amazon-beauty", "amazon-toys", "ml-100k")

REFERENCES = {
    "amazon-beauty": [
        (
            _DIFFURECSYS,
            _diffurecsys_rows(
                [
                    (0.0206, 0.0371, 0.0370, 0.0541, 0.0557, 0.0669, 0.0667),
                    (0.0332, 0.0592, 0.0598, 0.0825, 0.0790, 0.0974, 0.0980),
                    (0.0526, 0.0893, 0.0935, 0.1102, 0.1110, 0.1399, 0.1400),
                    (0.0139, 0.0233, 0.0233, 0.0362, 0.0400, 0.0458, 0.0458),
                    (0.0175, 0.0284, 0.0306, 0.0447, 0.0475, 0.0556, 0.0559),
                    (0.0221, 0.0361, 0.0391, 0.0531, 0.0556, 0.0663, 0.0665),
                ]
            ),
        ),
        (
            _CDDREC,
            _cddrec_rows(
                {
                    "GRU4Rec": (0.0266, 0.0421, 0.0172, 0.0222),
                    "SASRec": (0.0416, 0.0633, 0.0274, 0.0343),
                    "BERT4Rec": (0.0396, 0.0595, 0.0257, 0.0321),
                    "DuoRec": (0.0278, 0.0403, 0.0193, 0.0233),
                    "CDDRec": (0.0542, 0.0770, 0.0376, 0.0447),
                }
            ),
        ),
    ],
    "amazon-toys": [
        (
            _DIFFURECSYS,
            _diffurecsys_rows(
                [
                    (0.0121, 0.0429, 0.0371, 0.0539, 0.0557, 0.0692, 0.0684),
                    (0.0184, 0.0652, 0.0524, 0.0744, 0.0746, 0.0986, 0.0971),
                    (0.0290, 0.0957, 0.0760, 0.1056, 0.0984, 0.1371, 0.1350),
                    (0.0077, 0.0248, 0.0259, 0.0340, 0.0417, 0.0458, 0.0455),
                    (0.0097, 0.0320, 0.0329, 0.0406, 0.0477, 0.0553, 0.0548),
                    (0.0123, 0.0397, 0.0368, 0.0472, 0.0537, 0.0650, 0.0643),
                ]
            ),
        ),
        (
            _CDDREC,
            _cddrec_rows(
                {
                    "GRU4Rec": (0.0226, 0.0363, 0.0148, 0.0192),
                    "SASRec": (0.0551, 0.0797, 0.0377, 0.0456),
                    "BERT4Rec": (0.0300, 0.0466, 0.0206, 0.0260),
                    "DuoRec": (0.0258, 0.0360, 0.0179, 0.0212),
                    "CDDRec": (0.0665, 0.0935, 0.0472, 0.0559),
                }
            ),
        ),
    ],
    "ml-1m": [
        (
            _DIFFURECSYS,
            _diffurecsys_rows(
                [
                    (0.0806, 0.1078, 0.1308, 0.1679, 0.1797, 0.1940, 0.1957),
                    (0.1344, 0.1810, 0.2219, 0.2540, 0.2626, 0.2829, 0.2843),
                    (0.2081, 0.2745, 0.3354, 0.3478, 0.3679, 0.3947, 0.3958),
                    (0.0475, 0.0681, 0.0804, 0.1091, 0.1212, 0.1319, 0.1319),
                    (0.0649, 0.0918, 0.1097, 0.1370, 0.1479, 0.1607, 0.1605),
                    (0.0834, 0.1156, 0.1384, 0.1607, 0.1744, 0.1888, 0.1886),
                ]
            ),
        ),
    ],
}


# --------------------------------------------------------------------------- #
# statistics
# --------------------------------------------------------------------------- #
def model_sort_key(model):
    base = model.split("-", 1)[0]
    rank = MODEL_ORDER.index(base) if base in MODEL_ORDER else len(MODEL_ORDER)
    return (is_diffusion(model), rank, model)


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _std(values):
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


def summarize(records):
    """Per model: the ok units' test metrics by seed, their mean, std and costs."""
    by_model = defaultdict(list)
    for (model, _seed), record in latest_records(records).items():
        if record.get("status") == OK:
            by_model[model].append(record)
    summary = {}
    for model in sorted(by_model, key=model_sort_key):
        units = sorted(by_model[model], key=lambda r: r["seed"])
        values = {m: {u["seed"]: u["metrics"].get(m) for u in units} for m in METRICS}
        summary[model] = {
            "n": len(units),
            "seeds": [u["seed"] for u in units],
            "values": values,
            "mean": {m: _mean(values[m].values()) for m in METRICS},
            "std": {m: _std(values[m].values()) for m in METRICS},
            "cost": {
                key: _mean(u.get(key) for u in units)
                for key in (
                    "params",
                    "seconds_per_epoch",
                    "train_seconds",
                    "users_per_second",
                    "peak_memory_mb",
                    "epochs_trained",
                    "best_epoch",
                )
            },
            "peak_memory_kind": units[0].get("peak_memory_kind"),
            "best_stages": sorted(
                {u["best_stage"] for u in units if u.get("best_stage") is not None}
            ),
            "units": units,
        }
    return summary


def mark_best(means):
    """{model: 'best' | 'second' | None} by mean, higher is better; ties share."""
    present = sorted({v for v in means.values() if v is not None}, reverse=True)
    marks = {}
    for model, value in means.items():
        if value is None or not present:
            marks[model] = None
        elif value == present[0]:
            marks[model] = "best"
        elif len(present) > 1 and value == present[1]:
            marks[model] = "second"
        else:
            marks[model] = None
    return marks


def best_of(summary, metric, diffusion):
    """The model with the highest mean ``metric`` in one group, or None."""
    group = {
        m: s["mean"][metric]
        for m, s in summary.items()
        if is_diffusion(m) == diffusion and s["mean"][metric] is not None
    }
    return max(group, key=group.get) if group else None


def improvement(summary, metric):
    """(best diffusion, best baseline, relative gain) on ``metric``, or None."""
    diffusion = best_of(summary, metric, True)
    baseline = best_of(summary, metric, False)
    if diffusion is None or baseline is None:
        return None
    gain = relative_gain(
        summary[diffusion]["mean"][metric], summary[baseline]["mean"][metric]
    )
    return diffusion, baseline, gain


def relative_gain(value, reference):
    """(value - reference) / reference, or None for a zero reference."""
    return (value - reference) / reference if reference else None


def paired_ttest(model_values, baseline_values):
    """One-sided paired t-test, H1: model > baseline, over the shared seeds.

    Args:
        model_values, baseline_values: {seed: value}.

    Returns:
        dict: n, mean_diff, t, p (t and p None when n < 2 or the differences
        have no variance), and ``note`` saying why.
    """
    from scipy import stats

    seeds = sorted(
        s
        for s in set(model_values) & set(baseline_values)
        if model_values[s] is not None and baseline_values[s] is not None
    )
    a = [model_values[s] for s in seeds]
    b = [baseline_values[s] for s in seeds]
    out = {"n": len(seeds), "mean_diff": None, "t": None, "p": None, "note": None}
    if not seeds:
        out["note"] = "no shared seeds"
        return out
    diffs = [x - y for x, y in zip(a, b)]
    out["mean_diff"] = statistics.fmean(diffs)
    if len(seeds) < 2:
        out["note"] = "n < 2"
        return out
    # metrics carry 4 decimals, so equal differences are equal only up to rounding
    if statistics.pstdev(diffs) < 1e-9:
        out["note"] = "differences have no variance"
        return out
    result = stats.ttest_rel(a, b, alternative="greater")
    out["t"] = float(result.statistic)
    out["p"] = float(result.pvalue)
    return out


# --------------------------------------------------------------------------- #
# formatting
# --------------------------------------------------------------------------- #
def fmt_metric(mean, std):
    if mean is None:
        return "–"
    if std is None:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {std:.4f}"


def _decorate(text, mark):
    if mark == "best":
        return f"**{text}**"
    if mark == "second":
        return f"<u>{text}</u>"
    return text


def _fmt_seconds(seconds):
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _fmt_number(value, digits=1):
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _fmt_value(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return str(value).replace("'", "")
    return str(value)


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def results_table(summary):
    """The metrics table lines: mean ± std, best bold, second underlined."""
    marks = {
        m: mark_best({k: s["mean"][m] for k, s in summary.items()}) for m in METRICS
    }
    rows = []
    for model, s in summary.items():
        cells = [
            _decorate(fmt_metric(s["mean"][m], s["std"][m]), marks[m][model])
            for m in METRICS
        ]
        rows.append([model, s["n"], *cells])
    gains = [improvement(summary, m) for m in METRICS]
    if all(g is not None for g in gains):
        cells = []
        for diffusion, baseline, gain in gains:
            cells.append(
                "–" if gain is None else f"{gain:+.1%} ({diffusion} vs {baseline})"
            )
        rows.append(["*best diffusion vs best baseline*", "", *cells])
    return _table(["model", "seeds", *(METRIC_LABELS[m] for m in METRICS)], rows)


def _group_overrides(units):
    """(common overrides, {model: model-specific overrides}) as recorded.

    Common: what the protocol set for every model (``protocol_common`` of the
    latest record); a model's own: its overrides that differ from it.
    """
    latest = {}
    for unit in units:
        latest[unit["model"]] = unit
    if not latest:
        return {}, {}
    recorded = [u.get("protocol_common") for u in latest.values()]
    common = next((c for c in reversed(recorded) if c is not None), None)
    if common is None:  # records without it: what all models share
        overrides = [u.get("overrides", {}) for u in latest.values()]
        first = overrides[0]
        common = {
            k: v for k, v in first.items() if all(o.get(k) == v for o in overrides)
        }
    specific = {}
    for model, unit in latest.items():
        overrides = unit.get("overrides", {})
        specific[model] = {
            k: v for k, v in overrides.items() if k not in common or common[k] != v
        }
    return dict(sorted(common.items())), specific


def _unique(values):
    seen = []
    for value in values:
        if value and value not in seen:
            seen.append(value)
    return seen


def _machine_text(machine):
    gpu = machine.get("gpu") or "no GPU"
    return (
        f"{machine.get('cpu')} ({machine.get('cpu_count')} cores, "
        f"{machine.get('torch_threads')} torch threads per unit), {gpu}, "
        f"{machine.get('platform')}"
    )


def _versions_text(versions):
    keys = ("python", "torch", "recbole", "numpy", "recbole_diffusion")
    text = ", ".join(f"{k} {versions.get(k)}" for k in keys)
    if versions.get("git_commit"):
        dirty = " + uncommitted changes" if versions.get("git_dirty") else ""
        text += f"; commit {versions['git_commit']}{dirty}"
    return text


def output_stem(dataset, protocol):
    return dataset if protocol == DEFAULT_PROTOCOL else f"{dataset}.{protocol}"


def render_page(records, dataset, protocol, raw_name=None, plot_name=None):
    """The markdown page of one dataset and protocol, from its raw records."""
    latest = latest_records(records)
    units = list(latest.values())
    summary = summarize(records)
    raw_name = raw_name or f"raw/{dataset}.{protocol}.jsonl"
    lines = [
        f"# {dataset}: head-to-head, `{protocol}` protocol",
        "",
        f"Generated by `python benchmarks/render.py --dataset={dataset} "
        f"--protocol={protocol}` from `{raw_name}` alone; do not edit by hand.",
        "",
    ]

    # settings
    description = _unique(u.get("protocol_description") for u in units)
    common, specific = _group_overrides(units)
    seeds = sorted({u["seed"] for u in units})
    lines += ["## Settings", ""]
    if description:
        lines += [f"Protocol `{protocol}`: {description[-1]}", ""]
    lines += [
        "- Split and evaluation (every model): leave-one-out by time (last item "
        "test, second last validation), full ranking over all items, no history "
        "masking. Test metrics are those of the epoch with the best validation "
        f"{_valid_metric(units)}; the test set never selects anything.",
        f"- Seeds: {', '.join(map(str, seeds)) or '–'}; the table gives the mean ± "
        "sample standard deviation over the seeds that finished.",
    ]
    if common:
        lines.append(
            "- Protocol parameters for every model: "
            + ", ".join(f"`{k}: {_fmt_value(v)}`" for k, v in common.items())
            + "."
        )
    lines.append(
        "- Everything else comes from each model's property file "
        "(`props/<Model>.yaml`: the paper's or reference code's defaults, "
        "including training settings that belong to a paper, such as its weight "
        "decay or ADRec's cosine learning-rate schedule: see the table below) or "
        "RecBole's defaults for its baselines."
    )
    if any(specific.values()):
        lines.append(
            "- Per-model protocol parameters (the protocol's description says why):"
        )
        for model in sorted(specific, key=model_sort_key):
            if specific[model]:
                params = ", ".join(
                    f"`{k}: {_fmt_value(v)}`"
                    for k, v in sorted(specific[model].items())
                )
                lines.append(f"  - {model}: {params}")
    lines += ["", "Resolved hyperparameters (from the recorded configuration):", ""]
    config_rows = []
    for model in sorted({u["model"] for u in units}, key=model_sort_key):
        config = (
            next(
                (
                    u.get("config")
                    for u in units
                    if u["model"] == model and u.get("config")
                ),
                None,
            )
            or {}
        )
        config_rows.append(
            [model, *(_fmt_value(config.get(k, "–")) for k in SHOWN_KEYS)]
        )
    lines += _table(["model", *SHOWN_KEYS], config_rows)
    machines = _unique(u.get("machine") and _machine_text(u["machine"]) for u in units)
    versions = _unique(
        u.get("versions") and _versions_text(u["versions"]) for u in units
    )
    wall = sum(u.get("wall_seconds") or 0 for u in units)
    starts = sorted(u["started_at"] for u in units if u.get("started_at"))
    ends = sorted(u["finished_at"] for u in units if u.get("finished_at"))
    lines += [""]
    lines += [f"- Machine: {m}" for m in machines]
    lines += [f"- Libraries: {v}" for v in versions]
    loads = [u["machine"]["load_average"][0] for u in units if u.get("machine")]
    if loads:
        lines.append(
            f"- Load average at unit start: {min(loads):.1f} to {max(loads):.1f} "
            "(the machine was shared; timings are comparable within this page only)."
        )
    if units:
        lines.append(
            f"- Wall time: {_fmt_seconds(wall)} over {len(units)} units, "
            f"{_concurrency_text(most_at_once(units))} "
            f"(first unit started {starts[0] if starts else '?'}, "
            f"last finished {ends[-1] if ends else '?'})."
        )
    lines.append("")

    # dataset
    stats = next((u["dataset_stats"] for u in units if u.get("dataset_stats")), None)
    lines += ["## Dataset", ""]
    if stats:
        lines += _table(
            ["users", "items", "interactions", "avg. length", "density"],
            [
                [
                    f"{stats['users']:,}",
                    f"{stats['items']:,}",
                    f"{stats['interactions']:,}",
                    f"{stats['avg_length']:.1f}",
                    f"{stats['density']:.4f}",
                ]
            ],
        )
        lines += [
            "",
            "After RecBole's loading and filtering, as the models saw it.",
            "",
        ]
    else:
        lines += ["No unit reached data loading.", ""]

    # results
    lines += [
        "## Results",
        "",
        "Test metrics at the best validation epoch, mean ± std over seeds. Best per "
        "column in **bold**, second <u>underlined</u>. The last row is the relative "
        "gain of the best diffusion model over the best baseline in each column.",
        "",
    ]
    if summary:
        lines += results_table(summary)
        if plot_name:
            lines += ["", f"![NDCG@10 against inference throughput]({plot_name})"]
    else:
        lines.append("No unit finished yet.")
    lines.append("")

    # significance
    lines += _ttest_section(summary)

    # cost
    lines += [
        "## Cost",
        "",
        "s/epoch: training only (no validation); train time: the whole `fit` "
        "(training and validation of every epoch); users/s: `full_sort_predict` on "
        "the test users after training; epochs run counts every stage of a "
        "multi-stage trainer (ADRec), whose best epoch is counted within its stage; "
        "peak memory: " + _memory_kind(summary) + ". Means over seeds.",
        "",
    ]
    cost_rows = []
    for model, s in summary.items():
        c = s["cost"]
        cost_rows.append(
            [
                model,
                f"{c['params']:,.0f}" if c["params"] is not None else "–",
                _fmt_number(c["seconds_per_epoch"]),
                _fmt_number(c["epochs_trained"]),
                _fmt_number(c["best_epoch"])
                + (
                    " (stage " + "/".join(map(str, s["best_stages"])) + ")"
                    if s["best_stages"]
                    else ""
                ),
                _fmt_seconds(c["train_seconds"]),
                _fmt_number(c["users_per_second"]),
                _fmt_number(c["peak_memory_mb"], 0),
            ]
        )
    lines += _table(
        [
            "model",
            "params",
            "s/epoch",
            "epochs run",
            "best epoch",
            "train time",
            "users/s",
            "peak memory (MiB)",
        ],
        cost_rows,
    )
    lines.append("")

    # published numbers
    if dataset in REFERENCES or dataset in ADREC_CLAIM_DATASETS:
        lines += _reference_section(dataset, summary, protocol)

    # failures
    failed = [u for u in units if u.get("status") != OK]
    lines += ["## Failed or diverged units", ""]
    if failed:
        for unit in sorted(
            failed, key=lambda u: (model_sort_key(u["model"]), u["seed"])
        ):
            error = " ".join(str(unit.get("error") or "").split())[:400]
            lines.append(
                f"- {unit['model']} seed {unit['seed']}: **{unit['status']}**: {error} "
                f"(log `{unit.get('log', '?')}`)"
            )
    else:
        lines.append("None.")
    lines.append("")
    return "\n".join(lines)


def most_at_once(units):
    """The largest number of units whose [started_at, finished_at] overlapped."""
    events = []
    for unit in units:
        if unit.get("started_at") and unit.get("finished_at"):
            start = datetime.datetime.fromisoformat(unit["started_at"])
            end = datetime.datetime.fromisoformat(unit["finished_at"])
            events += [(start, 1), (end, -1)]
    running = most = 0
    # an end sorts before a start at the same instant: back-to-back is not overlap
    for _, change in sorted(events):
        running += change
        most = max(most, running)
    return most


def _concurrency_text(most):
    if most <= 1:
        return "run one at a time"
    return (
        f"at most {most} at a time, so overlapping units shared the cores and "
        "ran slower than alone"
    )


def _valid_metric(units):
    for unit in units:
        metric = (unit.get("config") or {}).get("valid_metric")
        if metric:
            return metric
    return "metric"


def _memory_kind(summary):
    kinds = {s["peak_memory_kind"] for s in summary.values()}
    if kinds == {"cuda_max_allocated"}:
        return "`torch.cuda.max_memory_allocated` of the unit's process"
    return "peak resident set size of the unit's process (`getrusage`, CPU)"


def _ttest_section(summary):
    lines = ["## Significance", ""]
    candidates = {
        m: s["mean"][SELECTION_METRIC]
        for m, s in summary.items()
        if not is_diffusion(m) and s["mean"][SELECTION_METRIC] is not None
    }
    diffusion = [m for m in summary if is_diffusion(m)]
    if not candidates or not diffusion:
        lines += ["Needs at least one diffusion model and one baseline.", ""]
        return lines
    baseline = max(candidates, key=candidates.get)
    lines += [
        f"Paired t-test (`scipy.stats.ttest_rel`, paired by seed) of each diffusion "
        f"model against the best baseline by mean NDCG@10, **{baseline}**. "
        "One-sided: H1 is that the diffusion model's mean is greater; p < 0.05 is "
        f"marked \\*. With {_seed_count(summary)} seed(s) per model the test has "
        "little power: "
        "read p as a rough guide, not a verdict.",
        "",
    ]
    rows = []
    for model in diffusion:
        for metric in TTEST_METRICS:
            test = paired_ttest(
                summary[model]["values"][metric], summary[baseline]["values"][metric]
            )
            if test["p"] is None:
                t_text, p_text = "–", f"n/a ({test['note']})"
            else:
                t_text = f"{test['t']:.2f}"
                p_text = f"{test['p']:.3f}" + (" \\*" if test["p"] < 0.05 else "")
            diff = "–" if test["mean_diff"] is None else f"{test['mean_diff']:+.4f}"
            rows.append([model, METRIC_LABELS[metric], test["n"], diff, t_text, p_text])
    lines += _table(
        ["model", "metric", "pairs", "mean diff", "t", "p (one-sided)"], rows
    )
    lines.append("")
    return lines


def _seed_count(summary):
    counts = sorted({s["n"] for s in summary.values()})
    return counts[0] if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def _reference_section(dataset, summary, protocol):
    lines = [
        "## Published numbers",
        "",
        "Copied from `docs/REFERENCE_RESULTS.md`. The papers train with their own "
        f"settings (hidden size, length, epochs); ours follow the `{protocol}` "
        "protocol above, so compare orders of magnitude and rankings, not decimals.",
        "",
    ]
    for source, rows in REFERENCES.get(dataset, []):
        metrics = [m for m in _HR_NDCG if any(m in r for r in rows.values())]
        table_rows = []
        # "ours" only beside a model this source reports: a row with no published
        # partner would repeat the results table, not compare with anything.
        for model in sorted(rows, key=model_sort_key):
            table_rows.append(
                [
                    f"{model} (paper)",
                    *(
                        f"{rows[model][m]:.4f}" if m in rows[model] else "–"
                        for m in metrics
                    ),
                ]
            )
            if model in summary:
                table_rows.append(
                    [
                        f"{model} (ours)",
                        *(fmt_metric(summary[model]["mean"][m], None) for m in metrics),
                    ]
                )
        lines += [f"Source: {source}.", ""]
        lines += _table(["model", *(METRIC_LABELS[m] for m in metrics)], table_rows)
        lines.append("")
    lines += _adrec_claim_lines(dataset, summary)
    return lines


def _adrec_claim_lines(dataset, summary):
    """The ADRec paper's relative claim beside the same ratio measured here."""
    if dataset not in ADREC_CLAIM_DATASETS:
        return []
    lines = [
        f"Source: {_ADREC}. The paper gives no absolute numbers, only gains over "
        "the best diffusion baseline on its own (smaller) preparation of the data: "
        + ", ".join(
            f"{METRIC_LABELS[m]} {gain:+.2%}" for m, gain in ADREC_CLAIM.items()
        )
        + ".",
        "",
    ]
    others = {m: s for m, s in summary.items() if m.split("-", 1)[0] != "ADRec"}
    rows = []
    for metric, claimed in ADREC_CLAIM.items():
        best = best_of(others, metric, diffusion=True)
        ours = summary["ADRec"]["mean"][metric] if "ADRec" in summary else None
        if best is None or ours is None:
            continue
        reference = summary[best]["mean"][metric]
        gain = relative_gain(ours, reference)
        rows.append(
            [
                METRIC_LABELS[metric],
                f"{claimed:+.2%}",
                fmt_metric(ours, None),
                f"{best} {fmt_metric(reference, None)}",
                "–" if gain is None else f"{gain:+.2%}",
            ]
        )
    if not rows:
        return lines + ["Ours: needs ADRec and another diffusion model.", ""]
    lines += _table(
        [
            "metric",
            "paper: ADRec vs best diffusion",
            "ADRec (ours)",
            "best other diffusion (ours)",
            "ours: ADRec vs best diffusion",
        ],
        rows,
    )
    lines.append("")
    return lines


def render_plot(summary, path, title):
    """NDCG@10 against users per second (log x), one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, s in summary.items():
        x = s["cost"]["users_per_second"]
        y = s["mean"]["ndcg@10"]
        if x is None or y is None:
            continue
        diffusion = is_diffusion(model)
        ax.errorbar(
            x,
            y,
            yerr=s["std"]["ndcg@10"] or 0,
            fmt="o" if diffusion else "s",
            color="tab:red" if diffusion else "tab:blue",
            capsize=3,
        )
        ax.annotate(
            model, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9
        )
    ax.set_xscale("log")
    ax.set_xlabel("full-sort inference throughput (users/s, log scale)")
    ax.set_ylabel("test NDCG@10 (mean ± std over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    handles = [
        plt.Line2D([], [], marker="s", color="tab:blue", ls="", label="baseline"),
        plt.Line2D([], [], marker="o", color="tab:red", ls="", label="diffusion"),
    ]
    ax.legend(handles=handles, loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_page(dataset, protocol=DEFAULT_PROTOCOL, results_dir=DEFAULT_RESULTS_DIR):
    """Write the page (and the plot when a unit finished); return the paths."""
    results_dir = Path(results_dir)
    path = raw_path(results_dir, dataset, protocol)
    records = read_raw(path)
    stem = output_stem(dataset, protocol)
    summary = summarize(records)
    written = []
    plot_name = None
    if summary:
        plot_path = results_dir / f"{stem}.png"
        render_plot(summary, plot_path, f"{dataset}, {protocol} protocol")
        plot_name = plot_path.name
        written.append(plot_path)
    page = render_page(
        records, dataset, protocol, raw_name=f"raw/{path.name}", plot_name=plot_name
    )
    page_path = results_dir / f"{stem}.md"
    page_path.write_text(page, encoding="utf-8")
    # only the committed results go into the README, never a scratch folder's
    committed = results_dir.resolve() == Path(DEFAULT_RESULTS_DIR).resolve()
    if summary and committed and update_readme(README_PATH, stem, summary, results_dir):
        written.append(README_PATH)
    return [page_path, *written]


def readme_block(stem, summary, results_dir):
    """The README's copy of a page's table, with links to the page and plot."""
    folder = _relative(Path(results_dir))
    seeds = _seed_count(summary)
    lines = [
        f"Test metrics at the best validation epoch, mean ± std over {seeds} "
        "seed(s); "
        f"generated from the raw results with the settings, costs and "
        f"significance tests in [{folder}/{stem}.md]({folder}/{stem}.md).",
        "",
        *results_table(summary),
        "",
        f"![NDCG@10 against inference throughput]({folder}/{stem}.png)",
    ]
    return "\n".join(lines)


def update_readme(readme, stem, summary, results_dir):
    """Replace the text between the README's markers for ``stem``, if present.

    Returns True when the README has the markers (and was rewritten).
    """
    readme = Path(readme)
    if not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8")
    start, end = f"<!-- results:{stem}:start -->", f"<!-- results:{stem}:end -->"
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    block = readme_block(stem, summary, results_dir)
    readme.write_text(f"{head}{start}\n{block}\n{end}{tail}", encoding="utf-8")
    return True


# --------------------------------------------------------------------------- #
# speed page
# --------------------------------------------------------------------------- #
def _ratio(value, reference):
    if value is None or not reference:
        return "–"
    return f"{value / reference:.2f}×"


def render_speed(records):
    """The speed page: per dataset, its latest run, as ratios to SASRec."""
    speed = [r for r in records if r.get("kind") == "speed"]
    lines = [
        "# Speed: training and inference throughput",
        "",
        "Generated by `python benchmarks/render.py --speed` from "
        "`raw/speed.jsonl`; do not edit by hand. Written by "
        "`python benchmarks/run.py --speed` (no full training).",
        "",
        "Per model, in a process of its own, with the protocol's parameters "
        "(same hidden size and length for all; the batch is the protocol's, given "
        "per model: a step of ADRec or CDDRec holds whole sequences): training "
        "steps per second (untimed warm-up steps, then timed steps on real batches: "
        "forward, loss, backward, optimizer step; a model's special trainer "
        "stages are not run) and `full_sort_predict` users per second on the "
        "first test users. Ratios are to SASRec measured in the same run, on the "
        "same machine. The inference-steps table respaces the reverse chain "
        "(`inference_steps`); NDCG@10 is given only where a model trained under "
        "the same protocol was found in the raw results (its seed is named), "
        "otherwise throughput only. Models run one after another, not at the "
        "same time; on a shared machine the load average is given.",
        "",
    ]
    sections = _unique((r["dataset"], r.get("protocol", "cpu")) for r in speed)
    if not sections:
        lines.append("No measurement yet.")
    for dataset, protocol in sections:
        # the latest run is the last one appended to the raw file
        run_id = [
            r["run_id"]
            for r in speed
            if (r["dataset"], r.get("protocol", "cpu")) == (dataset, protocol)
        ][-1]
        rows = {}
        for record in speed:
            if record["dataset"] == dataset and record["run_id"] == run_id:
                rows[record["model"]] = record
        reference = (
            rows.get("SASRec") if rows.get("SASRec", {}).get("status") == OK else None
        )
        ok = [r for r in rows.values() if r.get("status") == OK]
        first = ok[0] if ok else next(iter(rows.values()))
        heading = dataset if protocol == "cpu" else f"{dataset}, `{protocol}` protocol"
        lines += [f"## {heading}", ""]
        details = [f"run `{run_id}`"]
        if first.get("machine"):
            details.append(_machine_text(first["machine"]))
            loads = [r["machine"]["load_average"][0] for r in ok if r.get("machine")]
            if loads:
                details.append(f"load average {min(loads):.1f}-{max(loads):.1f}")
        if first.get("versions"):
            details.append(_versions_text(first["versions"]))
        if ok:
            details.append(
                f"protocol `{first['protocol']}`, {first['warmup_steps']} warm-up + "
                f"{first['train_steps']} timed steps, "
                f"L {first.get('max_item_list_length')}, "
                f"{first.get('users_measured')} test users per pass"
            )
        lines += ["; ".join(details) + ".", ""]
        ref_steps = reference and reference.get("train_steps_per_second")
        ref_users = reference and reference.get("users_per_second")
        table = []
        for model in sorted(rows, key=model_sort_key):
            r = rows[model]
            if r.get("status") != OK:
                table.append(
                    [
                        model,
                        f"{r.get('status')}: {str(r.get('error'))[:120]}",
                        "",
                        "",
                        "",
                        "",
                        "",
                    ]
                )
                continue
            table.append(
                [
                    model,
                    f"{r['params']:,}",
                    r.get("train_batch_size", "–"),
                    f"{r['train_steps_per_second']:.2f}",
                    _ratio(r["train_steps_per_second"], ref_steps),
                    f"{r['users_per_second']:.1f}",
                    _ratio(r["users_per_second"], ref_users),
                ]
            )
        lines += _table(
            [
                "model",
                "params",
                "batch",
                "train steps/s",
                "vs SASRec",
                "users/s",
                "vs SASRec",
            ],
            table,
        )
        lines.append("")
        trim_rows, cache_rows = [], []
        for model in sorted(rows, key=model_sort_key):
            r = rows[model]
            if r.get("status") != OK:
                continue
            if r.get("train_steps_per_second_untrimmed"):
                trimmed = r["train_steps_per_second"]
                untrimmed = r["train_steps_per_second_untrimmed"]
                batches = r.get("train_batches_per_epoch")
                trim_rows.append(
                    [
                        model,
                        f"{trimmed:.2f}",
                        f"{untrimmed:.2f}",
                        _ratio(trimmed, untrimmed),
                        f"{batches / trimmed:.0f}" if batches else "–",
                        f"{batches / untrimmed:.0f}" if batches else "–",
                    ]
                )
            if r.get("users_per_second_uncached"):
                cache_rows.append(
                    [
                        model,
                        f"{r['users_per_second']:.1f}",
                        f"{r['users_per_second_uncached']:.1f}",
                        _ratio(r["users_per_second"], r["users_per_second_uncached"]),
                    ]
                )
        if trim_rows:
            lines += [
                "Trimming padding (each batch cut to its longest real sequence "
                "before the Transformer, against every batch at "
                "`MAX_ITEM_LIST_LENGTH`; seconds per epoch estimated as batches "
                "per epoch over steps per second):",
                "",
            ]
            lines += _table(
                [
                    "model",
                    "steps/s trimmed",
                    "steps/s untrimmed",
                    "speed-up",
                    "s/epoch trimmed",
                    "s/epoch untrimmed",
                ],
                trim_rows,
            )
            lines.append("")
        if cache_rows:
            lines += [
                "Cached last-token inference (history keys and values computed once "
                "and reused at every reverse step, against recomputing the whole "
                "sequence at every step):",
                "",
            ]
            lines += _table(
                ["model", "users/s cached", "users/s uncached", "speed-up"],
                cache_rows,
            )
            lines.append("")
        step_rows = []
        for model in sorted(rows, key=model_sort_key):
            r = rows[model]
            for row in r.get("inference") or []:
                trained = (
                    f"{row['ndcg@10']:.4f} (seed {r.get('trained_seed')})"
                    if row.get("ndcg@10") is not None
                    else "– (no trained model)"
                )
                step_rows.append(
                    [
                        model,
                        row["inference_steps"],
                        f"{row['users_per_second']:.1f}",
                        _ratio(row["users_per_second"], ref_users),
                        trained,
                    ]
                )
        if step_rows:
            lines += ["Inference steps trade-off:", ""]
            lines += _table(
                ["model", "inference steps", "users/s", "vs SASRec", "test NDCG@10"],
                step_rows,
            )
            lines.append("")
    return "\n".join(lines) + "\n"


def write_speed(results_dir=DEFAULT_RESULTS_DIR):
    from benchmarks.speed import speed_raw_path

    results_dir = Path(results_dir)
    page = render_speed(read_raw(speed_raw_path(results_dir)))
    path = results_dir / "speed.md"
    path.write_text(page, encoding="utf-8")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset")
    parser.add_argument("--protocol", default=DEFAULT_PROTOCOL)
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR))
    args = parser.parse_args(argv)
    if args.speed:
        print(f"wrote {write_speed(args.results_dir)}")
    if args.dataset:
        written = write_page(args.dataset, args.protocol, args.results_dir)
        print("wrote " + ", ".join(str(p) for p in written))
    if not (args.speed or args.dataset):
        parser.error("give --dataset=NAME and/or --speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
