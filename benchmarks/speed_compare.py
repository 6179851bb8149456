"""Training step of two revisions, side by side, in one run.

    python -m benchmarks.speed_compare --compare-to=04f479f
    python -m benchmarks.speed_compare --compare-to=04f479f --models=DiffuRec,ADRec

The step is what the trainer runs: ``model.calculate_loss(batch)``, backward,
and the trainer's own optimizer step, with whatever the model and its trainer
build by default, on the first batches of the protocol's training loader
(``cpu`` protocol sizes on ml-100k by default, 1 torch thread). The earlier
revision is exported with ``git archive`` into a temporary folder and
imported from there in its own child process; the working tree is the other
side. For each model the children run in the order old, new, new, old (so a
change of machine load hits both sides alike), each timing ``--rounds``
blocks of ``--steps`` steps after ``--warmup`` untimed ones; a side's
milliseconds per step is the median of its blocks.

Efficiency, as the speed issue defines it: the step's floating-point
operations (``torch.utils.flop_counter.FlopCounterMode``: matrix products and
attention; elementwise work counts nothing) per second, over the core's
float32 matrix-product rate measured in the same child (a 512x512 ``a @ b``).

Records go to ``benchmarks/results/raw/speed_compare.jsonl``; ``python
benchmarks/render.py --speed`` puts the latest run on ``speed.md``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.protocol import PROJECT_ROOT  # noqa: E402
from benchmarks.raw import (  # noqa: E402
    DEFAULT_RESULTS_DIR,
    append_raw,
    compare_raw_path,
    now_iso,
)

__all__ = ["compare", "compare_raw_path", "measure_child", "main"]

DEFAULT_MODELS = "DiffuRec,DiffuRecSys,CDDRec,ADRec,DuoRec,SASRec+"
MATMUL_SIZE = 512


def _git(*args):
    return subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def export_revision(revision, folder):
    """Write ``revision``'s package and property files into ``folder``."""
    commit = _git("rev-parse", "--verify", f"{revision}^{{commit}}")
    archive = Path(folder) / "revision.tar"
    with open(archive, "wb") as handle:
        subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "archive", commit],
            check=True,
            stdout=handle,
        )
    with tarfile.open(archive) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.split("/")[0] in ("recbole_diffusion", "props")
        ]
        tar.extractall(folder, members=members, filter="data")
    archive.unlink()
    return commit


def matmul_rate():
    """Float32 matrix-product rate of this process, in FLOP/s (best of 20)."""
    import torch

    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE**3 / best


def measure_child(spec):
    """Time the training step of one model with the importable package.

    ``spec``: model, dataset, overrides, warmup, steps, rounds, threads.
    Returns a dict with the milliseconds of each block, the step's FLOPs and
    the matrix-product rate.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import recbole_diffusion
    from benchmarks.speed import train_step
    from recbole_diffusion.quick_start import build_pipeline

    try:
        from recbole_diffusion.registry import get_trainer
    except ImportError:  # revisions before the registry module
        from recbole_diffusion.utils import get_trainer

    torch.set_num_threads(spec["threads"])
    config, _, train_data, _, _, model = build_pipeline(
        model=spec["model"], dataset=spec["dataset"], config_dict=spec["overrides"]
    )
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    optimizer = trainer.optimizer
    needed = spec["warmup"] + spec["steps"]
    batches = []
    while len(batches) < needed:
        for batch in train_data:
            batches.append(batch)
            if len(batches) == needed:
                break
    model.train()

    def step(batch):
        train_step(model, optimizer, batch)

    for batch in batches[: spec["warmup"]]:
        step(batch)
    rate_before = matmul_rate()
    blocks = []
    for _ in range(spec["rounds"]):
        start = time.perf_counter()
        for batch in batches[spec["warmup"] :]:
            step(batch)
        blocks.append((time.perf_counter() - start) / spec["steps"] * 1000)
    rate_after = matmul_rate()
    counter = FlopCounterMode(display=False)
    flops = []
    for batch in batches[spec["warmup"] :][:3]:
        with counter:
            step(batch)
        flops.append(counter.get_total_flops())
    return {
        "package": str(Path(recbole_diffusion.__file__).resolve().parent),
        "ms_per_step_blocks": blocks,
        "flops_per_step": statistics.mean(flops),
        "matmul_flops_per_second": max(rate_before, rate_after),
        "anomaly_mode": torch.is_anomaly_enabled(),
        "threads": torch.get_num_threads(),
    }


def _run_child(spec, package_root, work_dir):
    environment = dict(os.environ)
    paths = [str(package_root), str(PROJECT_ROOT)]
    environment["PYTHONPATH"] = os.pathsep.join(
        paths + [p for p in [environment.get("PYTHONPATH")] if p]
    )
    environment["OMP_NUM_THREADS"] = str(spec["threads"])
    code = (
        "import json, sys\n"
        "from benchmarks.speed_compare import measure_child\n"
        "result = measure_child(json.loads(sys.argv[1]))\n"
        "print('RESULT ' + json.dumps(result))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        env=environment,
        capture_output=True,
        text=True,
        cwd=str(work_dir),  # RecBole writes log/ into the working directory
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"{spec['model']} at {package_root}: the child failed:\n{done.stderr[-3000:]}"
    )


def _protocol_overrides(protocol_name, dataset, model, work_dir):
    from benchmarks.protocol import load_protocol, unit_overrides

    protocol = load_protocol(protocol_name)
    overrides = dict(unit_overrides(protocol, dataset, model))
    overrides.update(
        seed=protocol["seeds"][0],
        checkpoint_dir=str(Path(work_dir) / "checkpoints"),
        show_progress=False,
    )
    return overrides, int(protocol.get("threads") or 1)


def compare(
    revision,
    models,
    dataset="ml-100k",
    protocol="cpu",
    warmup=3,
    steps=20,
    rounds=3,
    results_dir=DEFAULT_RESULTS_DIR,
    echo=print,
):
    """Time each model at ``revision`` and in the working tree; append records."""
    from benchmarks.environment import library_versions, machine_info

    run_id = time.strftime("%Y%m%d-%H%M%S")
    new_commit = _git("rev-parse", "HEAD")
    # results files change during a run; only code changes make it "dirty"
    dirty = bool(
        _git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!benchmarks/results",
        )
    )
    records = []
    with tempfile.TemporaryDirectory(prefix="speed-compare-") as folder:
        old_root = Path(folder) / "old"
        old_root.mkdir()
        old_commit = export_revision(revision, old_root)
        for model in models:
            overrides, threads = _protocol_overrides(protocol, dataset, model, folder)
            spec = {
                "model": model,
                "dataset": dataset,
                "overrides": overrides,
                "warmup": warmup,
                "steps": steps,
                "rounds": rounds,
                "threads": threads,
            }
            record = {
                "kind": "speed_compare",
                "run_id": run_id,
                "dataset": dataset,
                "protocol": protocol,
                "model": model,
                "old_revision": old_commit,
                "new_revision": new_commit
                + (" + uncommitted changes" if dirty else ""),
                "steps": steps,
                "rounds": rounds,
                "threads": threads,
                "started_at": now_iso(),
            }
            try:
                sides = {"old": [], "new": []}
                for side in ("old", "new", "new", "old"):
                    root = old_root if side == "old" else PROJECT_ROOT
                    sides[side].append(_run_child(spec, root, folder))
                for side, results in sides.items():
                    blocks = [b for r in results for b in r["ms_per_step_blocks"]]
                    rate = max(r["matmul_flops_per_second"] for r in results)
                    ms = statistics.median(blocks)
                    flops = results[0]["flops_per_step"]
                    record[f"{side}_ms_per_step"] = ms
                    record[f"{side}_ms_blocks"] = blocks
                    record[f"{side}_flops_per_step"] = flops
                    record[f"{side}_matmul_gflops"] = rate / 1e9
                    record[f"{side}_efficiency"] = flops / (ms / 1000) / rate
                    record[f"{side}_anomaly_mode"] = results[0]["anomaly_mode"]
                record["ratio"] = record["old_ms_per_step"] / record["new_ms_per_step"]
                record["status"] = "ok"
                echo(
                    f"{model}: {record['old_ms_per_step']:.1f} -> "
                    f"{record['new_ms_per_step']:.1f} ms/step "
                    f"({record['ratio']:.2f}x; efficiency "
                    f"{record['old_efficiency']:.0%} -> {record['new_efficiency']:.0%})"
                )
            except Exception as error:  # recorded, not raised
                record["status"] = "failed"
                record["error"] = f"{type(error).__name__}: {error}"[-2000:]
                echo(f"{model}: failed: {record['error'][-300:]}")
            record["finished_at"] = now_iso()
            record["machine"] = dict(machine_info("cpu"), torch_threads=threads)
            record["versions"] = library_versions()
            append_raw(compare_raw_path(results_dir), record)
            records.append(record)
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--compare-to", required=True, help="git revision to time")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--protocol", default="cpu")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR))
    parser.add_argument("--no-render", action="store_true")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    records = compare(
        args.compare_to,
        models,
        dataset=args.dataset,
        protocol=args.protocol,
        warmup=args.warmup,
        steps=args.steps,
        rounds=args.rounds,
        results_dir=args.results_dir,
    )
    if not args.no_render:
        from benchmarks.render import write_speed

        print(f"wrote {write_speed(args.results_dir)}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
