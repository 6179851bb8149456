"""Markdown for the result pages: tables by ``DataFrame.to_markdown`` and cell texts.

Every table of the pages is a GitHub pipe table in the pages' long-standing
layout: cells unpadded (``| a | b |``), a three-dash rule under the header,
cells taken as text (tabulate reformats no number).
"""

import pandas as pd
from tabulate import DataRow, TableFormat

__all__ = [
    "METRIC_LABELS",
    "decorate",
    "fmt_metric",
    "fmt_number",
    "fmt_seconds",
    "fmt_value",
    "machine_text",
    "markdown_table",
    "ratio",
    "unique",
    "versions_text",
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


def _rule(column_widths, _column_aligns):
    return "|" + "---|" * len(column_widths)


# Unpadded columns need no alignment (stralign=None); the rule is fixed, so a
# re-rendered page differs from the last one only where a number changed.
PAGE_TABLE = TableFormat(
    lineabove=None,
    linebelowheader=_rule,
    linebetweenrows=None,
    linebelow=None,
    headerrow=DataRow("|", "|", "|"),
    datarow=DataRow("|", "|", "|"),
    padding=1,
    with_header_hide=None,
)


def markdown_table(header, rows):
    """The lines of a pipe table with ``header`` over ``rows`` (cells as str)."""
    frame = pd.DataFrame(
        [[str(cell) for cell in row] for row in rows], columns=list(header)
    )
    text = frame.to_markdown(
        index=False,
        tablefmt=PAGE_TABLE,
        disable_numparse=True,
        stralign=None,
        numalign=None,
    )
    return text.splitlines()


def fmt_metric(mean, std):
    if mean is None:
        return "–"
    if std is None:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {std:.4f}"


def decorate(text, mark):
    if mark == "best":
        return f"**{text}**"
    if mark == "second":
        return f"<u>{text}</u>"
    return text


def fmt_seconds(seconds):
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def fmt_number(value, digits=1):
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_value(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return str(value).replace("'", "")
    return str(value)


def unique(values):
    seen = []
    for value in values:
        if value and value not in seen:
            seen.append(value)
    return seen


def machine_text(machine):
    gpu = machine.get("gpu") or "no GPU"
    return (
        f"{machine.get('cpu')} ({machine.get('cpu_count')} cores, "
        f"{machine.get('torch_threads')} torch threads per unit), {gpu}, "
        f"{machine.get('platform')}"
    )


def versions_text(versions):
    keys = ("python", "torch", "recbole", "numpy", "recbole_diffusion")
    text = ", ".join(f"{k} {versions.get(k)}" for k in keys)
    if versions.get("git_commit"):
        dirty = " + uncommitted changes" if versions.get("git_dirty") else ""
        text += f"; commit {versions['git_commit']}{dirty}"
    return text


def ratio(value, reference):
    if value is None or not reference:
        return "–"
    return f"{value / reference:.2f}×"
