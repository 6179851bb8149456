"""Accuracy and speed of fewer reverse steps, on one trained model.

Trains a diffusion model once (or loads ``--model_file``), then evaluates the
test set with ``inference_steps`` = each of ``--steps`` on the same weights,
timing full-sort scoring. Also times training epochs with and without
trimming batches to their longest sequence (``--trim_check``).

    python benchmarks/inference_steps.py --model=DiffuRec --dataset=ml-100k \
        --epochs=5 --steps=32,16,8,4 --output=benchmarks/results/inference_steps.md
"""

import argparse
import json
import platform
import time

import torch
from recbole.utils import init_seed

from recbole_diffusion.quick_start import build_pipeline, load_data_and_model
from recbole_diffusion.utils import get_trainer


def evaluate_with_steps(config, model, test_data, steps):
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    rows = []
    for inference_steps in steps:
        model.inference_steps = inference_steps
        init_seed(config["seed"], config["reproducibility"])
        start = time.perf_counter()
        result = trainer.evaluate(test_data, load_best_model=False)
        elapsed = time.perf_counter() - start
        users = len(test_data.dataset)
        rows.append(
            {
                "inference_steps": inference_steps,
                "ndcg@10": result["ndcg@10"],
                "hit@10": result["hit@10"],
                "users_per_second": users / elapsed,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def epoch_seconds(model_name, dataset, overrides, trim, epochs=1):
    config, _, train_data, _, _, model = build_pipeline(
        model=model_name, dataset=dataset, config_dict=overrides
    )
    type(model).trim_padding = trim
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    start = time.perf_counter()
    for epoch in range(epochs):
        trainer._train_epoch(train_data, epoch)
    type(model).trim_padding = True
    return (time.perf_counter() - start) / epochs


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="DiffuRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--model_file", help="evaluate this checkpoint instead")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", default="32,16,8,4")
    parser.add_argument("--set", action="append", default=[], help="key=value")
    parser.add_argument("--trim_check", help="dataset for the trimming timing")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    overrides = {"epochs": args.epochs, "show_progress": False}
    for item in args.set:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value) if value[:1] in "0123456789[{-tfn" else value
    steps = [int(s) for s in args.steps.split(",")]
    report = {
        "model": args.model,
        "dataset": args.dataset,
        "overrides": overrides,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    if args.model_file:
        config, model, _, _, _, test_data = load_data_and_model(args.model_file)
    else:
        from recbole_diffusion.quick_start import run_recbole_diffusion

        start = time.perf_counter()
        result = run_recbole_diffusion(
            model=args.model, dataset=args.dataset, config_dict=overrides
        )
        report["train_seconds"] = time.perf_counter() - start
        report["test_result"] = dict(result["test_result"])
        report["model_file"] = result["model_file"]
        print(json.dumps(report), flush=True)
        config, model, _, _, _, test_data = load_data_and_model(result["model_file"])
    report["inference_steps"] = evaluate_with_steps(config, model, test_data, steps)
    if args.trim_check:
        trim_overrides = {k: v for k, v in overrides.items() if k != "epochs"}
        report["trim_check"] = {
            "dataset": args.trim_check,
            "seconds_per_epoch_trimmed": epoch_seconds(
                args.model, args.trim_check, trim_overrides, trim=True
            ),
            "seconds_per_epoch_untrimmed": epoch_seconds(
                args.model, args.trim_check, trim_overrides, trim=False
            ),
        }
        print(json.dumps(report["trim_check"]), flush=True)
    if args.output:
        with open(args.output, "a") as handle:
            handle.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
