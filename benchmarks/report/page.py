"""The markdown page of one dataset and protocol: settings, dataset, results,
significance, cost, published numbers and failed units.

Conventions: mean ± sample standard deviation (ddof 1) over the seeds; per
column the best mean in bold and the second underlined; the improvement row
compares the best diffusion model with the best baseline per column; the
paired t-test is one-sided, H1: the diffusion model's mean is greater than the
best baseline's (the baseline with the highest mean NDCG@10).
"""

from pathlib import Path

from benchmarks.harness import _relative
from benchmarks.protocol import DEFAULT_PROTOCOL, METRICS, is_diffusion
from benchmarks.raw import OK, latest_records
from benchmarks.report.published import (
    ADREC_CLAIM,
    ADREC_CLAIM_DATASETS,
    ADREC_SOURCE,
    PUBLISHED_METRICS,
    REFERENCES,
)
from benchmarks.report.records import model_sort_key, summarize
from benchmarks.report.stats import (
    best_of,
    improvement,
    mark_best,
    most_at_once,
    paired_ttest,
    relative_gain,
)
from benchmarks.report.tables import (
    METRIC_LABELS,
    decorate,
    fmt_metric,
    fmt_number,
    fmt_seconds,
    fmt_value,
    machine_text,
    markdown_table,
    unique,
    versions_text,
)
from benchmarks.report.training import (
    diffusion_adds_section,
    is_ablation,
    running_section,
    running_units,
    stopping_section,
)

__all__ = [
    "output_stem",
    "readme_block",
    "render_page",
    "results_table",
]

# What a page of each shipped protocol is: the `cpu` protocol's tables rank
# models stopped after a few epochs, the `converged` protocol's models that
# stopped improving.
PROTOCOL_TITLES = {
    "cpu": "small-budget comparison (at most 5 epochs per model)",
    "converged": "head-to-head of models trained until they stop improving",
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


def results_table(summary):
    """The metrics table lines: mean ± std, best bold, second underlined."""
    marks = {
        m: mark_best({k: s["mean"][m] for k, s in summary.items()}) for m in METRICS
    }
    rows = []
    for model, s in summary.items():
        cells = [
            decorate(fmt_metric(s["mean"][m], s["std"][m]), marks[m][model])
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
    return markdown_table(
        ["model", "seeds", *(METRIC_LABELS[m] for m in METRICS)], rows
    )


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


def output_stem(dataset, protocol):
    return dataset if protocol == DEFAULT_PROTOCOL else f"{dataset}.{protocol}"


def render_page(
    records,
    dataset,
    protocol,
    raw_name=None,
    plot_name=None,
    progress=(),
    curves_name=None,
):
    """The markdown page of one dataset and protocol, from its raw records.

    ``progress``: the progress records of units still running (shown as
    such); ``curves_name``: the learning-curve figure beside the table.
    Ablation variants (``<Model>-Lambda<value>``) are compared with their
    parents in their own section, not ranked in the results table.
    """
    all_units = list(latest_records(records).values())
    all_summary = summarize(records)
    records = [r for r in records if not is_ablation(r.get("model", ""))]
    latest = latest_records(records)
    units = list(latest.values())
    summary = summarize(records)
    raw_name = raw_name or f"raw/{dataset}.{protocol}.jsonl"
    lines = [
        f"# {dataset}: {PROTOCOL_TITLES.get(protocol, 'head-to-head')}, "
        f"`{protocol}` protocol",
        "",
        f"Generated by `python benchmarks/render.py --dataset={dataset} "
        f"--protocol={protocol}` from `{raw_name}` alone; do not edit by hand.",
        "",
    ]

    # settings
    description = unique(u.get("protocol_description") for u in units)
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
            + ", ".join(f"`{k}: {fmt_value(v)}`" for k, v in common.items())
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
                    f"`{k}: {fmt_value(v)}`" for k, v in sorted(specific[model].items())
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
            [model, *(fmt_value(config.get(k, "–")) for k in SHOWN_KEYS)]
        )
    lines += markdown_table(["model", *SHOWN_KEYS], config_rows)
    machines = unique(u.get("machine") and machine_text(u["machine"]) for u in units)
    versions = unique(u.get("versions") and versions_text(u["versions"]) for u in units)
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
            f"- Wall time: {fmt_seconds(wall)} over {len(units)} units, "
            f"{_concurrency_text(most_at_once(units))} "
            f"(first unit started {starts[0] if starts else '?'}, "
            f"last finished {ends[-1] if ends else '?'})."
        )
    lines.append("")

    # dataset
    stats = next((u["dataset_stats"] for u in units if u.get("dataset_stats")), None)
    lines += ["## Dataset", ""]
    if stats:
        lines += markdown_table(
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
    lines += running_section(records, progress)
    if curves_name:
        lines += [
            "Learning curves: validation NDCG@10 after every epoch, against the "
            "epoch and against cumulative training seconds (log scale), one line "
            "per unit.",
            "",
            f"![validation NDCG@10 against epoch and training time]({curves_name})",
            "",
        ]
    lines += stopping_section(all_units)
    lines += diffusion_adds_section(all_summary)

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
                fmt_number(c["seconds_per_epoch"]),
                fmt_number(c["epochs_trained"]),
                fmt_number(c["best_epoch"])
                + (
                    " (stage " + "/".join(map(str, s["best_stages"])) + ")"
                    if s["best_stages"]
                    else ""
                ),
                fmt_seconds(c["train_seconds"]),
                fmt_number(c["users_per_second"]),
                fmt_number(c["peak_memory_mb"], 0),
            ]
        )
    lines += markdown_table(
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
    # a failed unit continued by --retry-failed is training again
    rerunning = {(e["model"], e["seed"]) for e in running_units(records, progress)}
    lines += ["## Failed or diverged units", ""]
    if failed:
        for unit in sorted(
            failed, key=lambda u: (model_sort_key(u["model"]), u["seed"])
        ):
            error = " ".join(str(unit.get("error") or "").split())[:400]
            again = (
                "; running again (see *Units in progress*)"
                if (unit["model"], unit["seed"]) in rerunning
                else ""
            )
            lines.append(
                f"- {unit['model']} seed {unit['seed']}: **{unit['status']}**: {error} "
                f"(log `{unit.get('log', '?')}`){again}"
            )
    else:
        lines.append("None.")
    lines.append("")
    return "\n".join(lines)


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
    lines += markdown_table(
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
        metrics = [m for m in PUBLISHED_METRICS if any(m in r for r in rows.values())]
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
        lines += markdown_table(
            ["model", *(METRIC_LABELS[m] for m in metrics)], table_rows
        )
        lines.append("")
    lines += _adrec_claim_lines(dataset, summary)
    return lines


def _adrec_claim_lines(dataset, summary):
    """The ADRec paper's relative claim beside the same ratio measured here."""
    if dataset not in ADREC_CLAIM_DATASETS:
        return []
    lines = [
        f"Source: {ADREC_SOURCE}. The paper gives no absolute numbers, only gains over "
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
    lines += markdown_table(
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
