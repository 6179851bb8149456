"""Reporting: every trial in RecBole's ``export_result`` layout, JSON and CSV, a
markdown summary, and RecBole's ``display_file`` figure."""

import csv
import html
import io
import json
from pathlib import Path

__all__ = [
    "write_csv",
    "write_display",
    "write_json",
    "write_markdown",
    "write_results",
]


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


def _plain(value):
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        return value.item()  # numpy scalars
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _trial_rows(summary):
    best = summary["best"]
    for number, trial in enumerate(summary["trials"], start=1):
        yield {
            "trial": number,
            "best": trial is best,
            "params": _plain(trial["params"]),
            "valid_score": None
            if trial.get("error")
            else _plain(trial["best_valid_score"]),
            "valid": _plain(trial.get("best_valid_result") or {}),
            "test": _plain(trial.get("test_result") or {}),
            "model_file": trial.get("model_file"),
            "result_file": trial.get("result_file"),
            "error": trial.get("error") or None,
        }


def write_json(path, summary):
    """Every trial as JSON: parameters, valid and test metrics, checkpoint."""
    record = {
        "model": summary["model"],
        "dataset": summary["dataset"],
        "algo": summary["algo"],
        "tool": summary["tool"],
        "params_file": summary["params_file"],
        "valid_metric": summary["valid_metric"],
        "bigger": summary["bigger"],
        "fixed": _plain(summary["fixed"]),
        "started": summary["started"].isoformat(timespec="seconds"),
        "finished": summary["finished"].isoformat(timespec="seconds"),
        "best_params": _plain(summary["best"]["params"]) if summary["best"] else None,
        "trials": list(_trial_rows(summary)),
    }
    Path(path).write_text(
        json.dumps(record, indent=1, allow_nan=True) + "\n", encoding="utf-8"
    )


def write_csv(path, summary):
    """One row per trial: number, parameters, valid score, test metrics, checkpoint."""
    rows = list(_trial_rows(summary))
    names = [p.name for p in summary["params"]]
    test_keys = []
    for row in rows:
        test_keys += [k for k in row["test"] if k not in test_keys]
    header = ["trial", "best", *names, f"valid_{summary['valid_metric']}"]
    header += [f"test_{k}" for k in test_keys] + ["model_file", "error"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for row in rows:
            writer.writerow(
                [row["trial"], row["best"]]
                + [row["params"].get(name, "") for name in names]
                + [row["valid_score"]]
                + [row["test"].get(k, "") for k in test_keys]
                + [row["model_file"] or "", row["error"] or ""]
            )


def write_display(path, summary):
    """RecBole's ``display_file``: the valid score of every trial, as a figure.

    RecBole draws it with plotly (not a dependency, and its code uses the
    ``np.str`` that numpy 1.24 removed); here matplotlib draws it, in the
    format of the file's extension, and ``.html`` embeds the figure as SVG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in _trial_rows(summary) if row["valid_score"] is not None]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(
        [row["trial"] for row in rows],
        [row["valid_score"] for row in rows],
        marker="o",
        color="green",
        label=f"{summary['model']} tuning process",
    )
    for row in rows:
        if row["best"]:
            axis.annotate("best", (row["trial"], row["valid_score"]))
    axis.set_xlabel("trial")
    axis.set_ylabel(f"valid {summary['valid_metric']}")
    axis.set_title(f"{summary['model']} on {summary['dataset']}")
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    if path.suffix.lower() in (".html", ".htm"):
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
        trials = "".join(
            f"<li>trial {row['trial']}: {html.escape(str(row['params']))} -> "
            f"{row['valid_score']:.4f}</li>"
            for row in rows
        )
        path.write_text(
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>hyperparams_tuning</title></head><body>{buffer.getvalue()}"
            f"<ol>{trials}</ol></body></html>\n",
            encoding="utf-8",
        )
    else:
        figure.savefig(path)
    plt.close(figure)
