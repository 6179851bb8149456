"""Render a dataset's results page and plot from its raw results file alone.

    python benchmarks/render.py --dataset=ml-100k [--protocol=cpu]
    python benchmarks/render.py --speed

writes ``benchmarks/results/<dataset>.md`` and ``<dataset>.png`` (for a
protocol other than ``cpu``: ``<dataset>.<protocol>.md`` / ``.png``), and
``benchmarks/results/speed.md`` from ``raw/speed.jsonl``; the README's copy of
a committed page's table is rewritten between its markers.

The page itself is made in ``benchmarks/report/``: ``records`` (raw records to
a table), ``stats``, ``figures``, ``tables`` (markdown) and the templates
``page`` and ``speed_page``. The names below are re-exported for the callers
of this module.
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.protocol import DEFAULT_PROTOCOL, PROJECT_ROOT  # noqa: E402
from benchmarks.raw import (  # noqa: E402
    DEFAULT_RESULTS_DIR,
    latest_records,
    raw_path,
    read_raw,
)
from benchmarks.report.figures import render_plot  # noqa: E402
from benchmarks.report.page import output_stem, readme_block, render_page  # noqa: E402
from benchmarks.report.published import REFERENCES  # noqa: E402
from benchmarks.report.records import MODEL_ORDER, summarize  # noqa: E402
from benchmarks.report.speed_page import render_speed  # noqa: E402
from benchmarks.report.stats import (  # noqa: E402
    improvement,
    mark_best,
    most_at_once,
    paired_ttest,
)
from benchmarks.report.training import render_curves, running_units  # noqa: E402
from benchmarks.runner import read_progress  # noqa: E402

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
    "update_readme",
    "write_page",
    "write_speed",
]

# The README shows the committed pages' tables between markers.
README_PATH = PROJECT_ROOT / "README.md"


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
    progress = read_progress(results_dir, dataset, protocol)
    running = running_units(records, progress)
    curves_path = results_dir / f"{stem}.curves.png"
    curves_name = None
    if any(r.get("valid_curve") for r in records) or running:
        title = f"{dataset}, {protocol} protocol"
        if render_curves(
            list(latest_records(records).values()), running, curves_path, title
        ):
            curves_name = curves_path.name
            written.append(curves_path)
    page = render_page(
        records,
        dataset,
        protocol,
        raw_name=f"raw/{path.name}",
        plot_name=plot_name,
        progress=progress,
        curves_name=curves_name,
    )
    page_path = results_dir / f"{stem}.md"
    page_path.write_text(page, encoding="utf-8")
    # only the committed results go into the README, never a scratch folder's
    committed = results_dir.resolve() == Path(DEFAULT_RESULTS_DIR).resolve()
    if summary and committed and update_readme(README_PATH, stem, summary, results_dir):
        written.append(README_PATH)
    return [page_path, *written]


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


def write_speed(results_dir=DEFAULT_RESULTS_DIR):
    from benchmarks.raw import compare_raw_path
    from benchmarks.report.speed_compare_page import render_speed_compare
    from benchmarks.speed import speed_raw_path

    results_dir = Path(results_dir)
    page = render_speed(read_raw(speed_raw_path(results_dir)))
    compare_lines = render_speed_compare(read_raw(compare_raw_path(results_dir)))
    if compare_lines:
        page = page.rstrip("\n") + "\n\n" + "\n".join(compare_lines) + "\n"
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
