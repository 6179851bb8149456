"""Time DuoRec's same-target index build and its per-batch sampling.

    python benchmarks/duorec_index.py --dataset=ml-1m

Loads the dataset through the plugin (the property files' split and
``MAX_ITEM_LIST_LENGTH``), builds the index ``--repeats`` times on the training
rows, times sampling the positives of one batch, and appends a record to
``benchmarks/results/raw/duorec_index.jsonl``.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.environment import library_versions, machine_info  # noqa: E402
from benchmarks.raw import now_iso  # noqa: E402
from recbole_diffusion.model.duorec import DuoRec  # noqa: E402
from recbole_diffusion.quick_start import build_pipeline  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--output", default=str(ROOT / "benchmarks/results/raw/duorec_index.jsonl")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    config, dataset, train_data, _, _, model = build_pipeline(
        model="DuoRec", dataset=args.dataset, config_dict={"show_progress": False}
    )
    load_seconds = time.perf_counter() - start
    rows = train_data._dataset.inter_feat
    item_seq, item_seq_len = rows[model.ITEM_SEQ], rows[model.ITEM_SEQ_LEN]
    targets = rows[model.POS_ITEM_ID]

    build_seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        DuoRec.build_same_target_index(
            targets, item_seq, item_seq_len, dataset.item_num
        )
        build_seconds.append(time.perf_counter() - start)

    batch = torch.arange(args.batch_size)
    start = time.perf_counter()
    for _ in range(20):
        model.sample_same_target(item_seq[batch], item_seq_len[batch], targets[batch])
    sample_ms = (time.perf_counter() - start) / 20 * 1e3

    record = {
        "dataset": args.dataset,
        "training_rows": len(rows),
        "max_item_list_length": config["MAX_ITEM_LIST_LENGTH"],
        "items": dataset.item_num,
        "load_and_split_seconds": load_seconds,
        "index_build_seconds": build_seconds,
        "index_build_median_seconds": statistics.median(build_seconds),
        "sample_batch_ms": sample_ms,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "machine": machine_info("cpu"),
        "versions": library_versions(),
        "finished_at": now_iso(),
    }
    with open(args.output, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    print(
        f"{args.dataset}: {len(rows):,} training rows, index build median "
        f"{record['index_build_median_seconds']:.2f} s over {args.repeats} "
        f"(load and split {load_seconds:.0f} s), sampling a batch of "
        f"{args.batch_size}: {sample_ms:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
