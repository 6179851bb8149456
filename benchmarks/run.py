"""Run the head-to-head benchmark, one unit (dataset, model, seed) at a time.

    python benchmarks/run.py --dataset=ml-100k --models=SASRec,DuoRec --seeds=3 \\
        --protocol=cpu
    python benchmarks/run.py --speed --datasets=ml-100k,amazon-beauty \\
        --models=SASRec,DiffuRec

Each unit runs in a child process and its record is appended to
``benchmarks/results/raw/<dataset>.<protocol>.jsonl`` when it ends; a rerun
skips the units already there (``--retry-failed`` reruns the failed ones).
The table is rendered with ``benchmarks/render.py`` (run.py renders it too
when the units end, unless ``--no-render``).
"""

import argparse
import json
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import DEFAULT_WORK_DIR  # noqa: E402
from benchmarks.protocol import (  # noqa: E402
    DEFAULT_PROTOCOL,
    ProtocolError,
    load_protocol,
)
from benchmarks.raw import DEFAULT_RESULTS_DIR  # noqa: E402
from benchmarks.runner import run_units  # noqa: E402

DEFAULT_MODELS = "SASRec,GRU4Rec,BERT4Rec,DuoRec,DiffuRec,DiffuRecSys,CDDRec,ADRec"


def _names(text):
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", help="dataset of the table (one)")
    parser.add_argument("--datasets", help="speed mode: comma-separated datasets")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="first N protocol seeds")
    parser.add_argument(
        "--protocol", default=DEFAULT_PROTOCOL, help="protocol name or yaml path"
    )
    parser.add_argument("--speed", action="store_true", help="speed mode")
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument("--unit-timeout", type=float, help="seconds per unit")
    parser.add_argument("--threads", type=int, help="torch threads per unit")
    parser.add_argument("--data-path", help="folder of <dataset>/<dataset>.inter")
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR))
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR))
    parser.add_argument("--no-render", action="store_true")
    parser.add_argument("--train-steps", type=int, default=20, help="speed mode")
    parser.add_argument("--warmup-steps", type=int, default=3, help="speed mode")
    parser.add_argument("--speed-users", type=int, default=1024, help="speed mode")
    # internal: the child process of one unit
    parser.add_argument("--child", choices=["unit", "speed"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child_main(args):
    """Run one unit (or one speed measurement) and write its record as JSON."""
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout
    )
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    if args.child == "unit":
        from benchmarks.harness import execute_unit

        record = execute_unit(spec)
    else:
        from benchmarks.speed import execute_speed

        record = execute_speed(spec)
    partial = Path(args.result + ".partial")
    partial.write_text(json.dumps(record, allow_nan=True), encoding="utf-8")
    partial.replace(args.result)
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return child_main(args)
    # On SIGTERM, exit through Python so that the running unit's child is killed
    # too (subprocess.run kills its child when the wait is interrupted).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        protocol = load_protocol(args.protocol)
    except ProtocolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    models = _names(args.models)
    if args.speed:
        from benchmarks.render import write_speed
        from benchmarks.speed import run_speed

        datasets = _names(args.datasets or args.dataset or "ml-100k")
        run_speed(
            datasets,
            models,
            protocol,
            results_dir=args.results_dir,
            work_dir=args.work_dir,
            data_path=args.data_path,
            train_steps=args.train_steps,
            warmup_steps=args.warmup_steps,
            max_users=args.speed_users,
            threads=args.threads,
            unit_timeout=args.unit_timeout,
        )
        if not args.no_render:
            print(f"wrote {write_speed(args.results_dir)}")
        return 0
    if not args.dataset:
        print("error: --dataset is required (or --speed)", file=sys.stderr)
        return 2
    try:
        counts = run_units(
            args.dataset,
            models,
            args.seeds,
            protocol,
            results_dir=args.results_dir,
            work_dir=args.work_dir,
            data_path=args.data_path,
            retry_failed=args.retry_failed,
            unit_timeout=args.unit_timeout,
            threads=args.threads,
        )
    except ProtocolError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{counts['run']} units run ({counts['ok']} ok, {counts['not_ok']} not ok), "
        f"{counts['skipped']} skipped"
    )
    if not args.no_render:
        from benchmarks.render import write_page

        written = write_page(args.dataset, protocol["name"], args.results_dir)
        print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
