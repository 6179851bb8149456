"""Reporting: every trial in RecBole's ``export_result`` layout, and a markdown summary."""

from pathlib import Path

__all__ = ["write_markdown", "write_results"]


def _params_text(params):
    return ", ".join(f"{name}:{value}" for name, value in params.items())


def _result_text(result):
    from recbole.utils import dict2str

    return dict2str(result) if result else "(none)"


def write_results(path, summary):
    """Every trial in RecBole's ``export_result`` layout, best first."""
    best = summary["best"]
    lines = [
        f"# {summary['model']} on {summary['dataset']}: {summary['algo']} search "
        f"({summary['tool']}), {len(summary['trials'])} trials",
        f"# best by valid {summary['valid_metric']}: "
        + (_params_text(best["params"]) if best else "no trial finished"),
        "",
    ]
    for trial in summary["trials"]:
        lines.append(_params_text(trial["params"]))
        if trial.get("error"):
            lines += [f"Failed: {trial['error']}", ""]
            continue
        lines += [
            "Valid result:",
            _result_text(trial["best_valid_result"]),
            "Test result:",
            _result_text(trial["test_result"]),
            "",
        ]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value).replace("|", "\\|")


def write_markdown(path, summary):
    params = summary["params"]
    trials = summary["trials"]
    best = summary["best"]
    metric = summary["valid_metric"]
    test_keys = []
    for trial in trials:
        for key in trial.get("test_result") or {}:
            if key not in test_keys:
                test_keys.append(key)
    fixed = {k: v for k, v in summary["fixed"].items() if k not in ("model", "dataset")}
    planned = summary["grid_size"]
    lines = [
        f"# Hyperparameter search: {summary['model']} on {summary['dataset']}",
        "",
        f"- Search: {summary['algo']} with {summary['tool']}, "
        f"{len(trials)} trials"
        + (f" of a {planned}-point grid" if planned else "")
        + f", from {summary['started']:%Y-%m-%d %H:%M} to "
        f"{summary['finished']:%Y-%m-%d %H:%M}.",
        f"- Selection: best valid {metric} "
        f"({'higher' if summary['bigger'] else 'lower'} is better); test results "
        "are of the checkpoint with the best valid score of each trial.",
        f"- Search space: `{summary['params_file']}`.",
        "- Fixed settings (beyond the model's and RecBole's defaults): "
        + (", ".join(f"`{k}={v}`" for k, v in fixed.items()) or "none")
        + (
            "; config files: "
            + ", ".join(f"`{f}`" for f in summary["config_file_list"])
            if summary["config_file_list"]
            else ""
        )
        + ".",
        "",
        "## Search space",
        "",
        "| parameter | type | values |",
        "|---|---|---|",
    ]
    lines += [f"| {p.name} | {p.kind} | {_cell(p.describe())} |" for p in params]
    lines += ["", "## Best parameters", ""]
    if best:
        lines += [f"- `{name}`: {value}" for name, value in best["params"].items()]
        lines += [
            "",
            f"Valid {metric}: {_cell(best['best_valid_score'])}. Test: "
            + ", ".join(f"{k} {_cell(v)}" for k, v in best["test_result"].items())
            + ".",
        ]
    else:
        lines.append("No trial finished.")
    names = [p.name for p in params]
    header = ["#"] + names + [f"valid {metric}"] + [f"test {k}" for k in test_keys]
    lines += [
        "",
        "## Trials",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for number, trial in enumerate(trials, start=1):
        mark = " (best)" if trial is best else ""
        row = [f"{number}{mark}"]
        row += [str(trial["params"].get(n, "")).replace("|", "\\|") for n in names]
        if trial.get("error"):
            row += ["failed: " + _cell(trial["error"])[:120]] + [""] * len(test_keys)
        else:
            row += [_cell(trial["best_valid_score"])]
            row += [_cell(trial["test_result"].get(k, "")) for k in test_keys]
        lines.append("| " + " | ".join(row) + " |")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
