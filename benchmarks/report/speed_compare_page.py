"""The speed page's side-by-side section: one training step at two revisions."""

from benchmarks.report.records import model_sort_key
from benchmarks.report.tables import machine_text, markdown_table, versions_text

__all__ = ["render_speed_compare"]


def render_speed_compare(records):
    """Lines of the latest side-by-side run per (dataset, protocol, old revision)."""
    compares = [r for r in records if r.get("kind") == "speed_compare"]
    if not compares:
        return []
    lines = [
        "## Training step, side by side with an earlier revision",
        "",
        "Written by `python -m benchmarks.speed_compare --compare-to=REV` "
        "(`raw/speed_compare.jsonl`). The step is what the trainer runs: "
        "`calculate_loss`, backward and the trainer's optimizer step, with what "
        "the model and trainer build by default, on the protocol's first "
        "training batches at 1 torch thread. Each revision runs in processes "
        "of its own, in the order old, new, new, old; ms/step is the median of "
        "the timed blocks. Efficiency: the step's FLOPs "
        "(`torch.utils.flop_counter.FlopCounterMode`) per second over the "
        "float32 matrix-product rate of a 512x512 `a @ b` in the same process "
        "(the long-term goal is 40%).",
        "",
    ]
    groups = {}
    for record in compares:
        key = (record["dataset"], record["protocol"], record["old_revision"])
        groups.setdefault(key, {})[record["run_id"]] = groups.get(key, {}).get(
            record["run_id"], []
        ) + [record]
    for (dataset, protocol, old), runs in groups.items():
        # the latest record of each model over this group's runs
        latest = {}
        for run_id in sorted(runs):
            for record in runs[run_id]:
                latest[record["model"]] = record
        # the machine and versions of the latest run
        first = runs[max(runs)][0]
        new_revisions = sorted({r["new_revision"] for r in latest.values()})
        lines += [
            f"### {dataset}, `{protocol}` protocol: `{old[:7]}` against "
            + ", ".join(f"`{n[:7]}{n[40:]}`" for n in new_revisions),
            "",
        ]
        details = [f"runs {', '.join(sorted(runs))}"]
        if first.get("machine"):
            details.append(machine_text(first["machine"]))
        if first.get("versions"):
            details.append(versions_text(first["versions"]))
        details.append(
            f"{first['rounds']} blocks of {first['steps']} steps per process, "
            f"{first['threads']} thread"
        )
        lines += ["; ".join(details) + ".", ""]
        table = []
        for model in sorted(latest, key=model_sort_key):
            r = latest[model]
            if r.get("status") != "ok":
                # one table row: the error's tail on one line, no column breaks
                error = " ".join(str(r.get("error")).split())[-120:]
                table.append(
                    [model, f"{r.get('status')}: {error.replace('|', '/')}"] + [""] * 5
                )
                continue
            table.append(
                [
                    model,
                    f"{r['old_ms_per_step']:.1f}",
                    f"{r['new_ms_per_step']:.1f}",
                    f"**{r['ratio']:.2f}x**"
                    if r["ratio"] >= 1.5
                    else f"{r['ratio']:.2f}x",
                    f"{r['old_efficiency']:.0%}",
                    f"{r['new_efficiency']:.0%}",
                    f"{r['new_flops_per_step'] / 1e9:.2f}",
                ]
            )
        lines += markdown_table(
            [
                "model",
                "old ms/step",
                "new ms/step",
                "speed-up",
                "old efficiency",
                "new efficiency",
                "GFLOP/step",
            ],
            table,
        )
        lines.append("")
    return lines
