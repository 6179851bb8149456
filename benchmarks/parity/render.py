"""``benchmarks/results/parity.md`` from ``benchmarks/results/raw/parity.jsonl``.

Per model: how to obtain the reference checkout (repository, commit, the
run-time patches, the exact commands) and the latest equivalence run's
largest absolute differences against the 1e-4 target; then the latest
training comparison (:mod:`benchmarks.parity.training_page`).

Run ``python -m benchmarks.parity.render`` (``--raw``, ``--output`` to
change the paths).
"""

import argparse
import json
from pathlib import Path

from benchmarks.parity.compare import TARGET
from benchmarks.parity.reference import REFERENCES, checkout_command
from benchmarks.parity.training_page import training_section, training_summary

__all__ = ["DEFAULT_PAGE", "FINDINGS", "latest_runs", "load_records", "main", "render"]

_RESULTS = Path(__file__).resolve().parents[1] / "results"
DEFAULT_RAW = _RESULTS / "raw" / "parity.jsonl"
DEFAULT_PAGE = _RESULTS / "parity.md"


def load_records(path=DEFAULT_RAW):
    """The records of the jsonl file ``path`` (none if it is missing)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def latest_runs(records):
    """``{model: records of its latest equivalence run}`` (a run: one date)."""
    runs = {}
    for record in records:
        if record.get("kind") != "equivalence":
            continue
        model, date = record["model"], record["date"]
        if model not in runs or date > runs[model][0]:
            runs[model] = (date, [])
        if date == runs[model][0]:
            runs[model][1].append(record)
    return {model: run for model, (_, run) in runs.items()}


def _status(record):
    if record["max_abs_diff"] <= TARGET:
        return "within"
    if not record.get("expected_equal", True):
        return "not expected (deviation)"
    return "**MISSED**"


def _cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


# What a run found, where the records alone do not say it.
FINDINGS = {
    "DiffuRecSys": (
        "Finding (training): the two-seed comparison below passes only through "
        "the reference's seed spread (test NDCG@10 0.0044 and 0.0021). Over 6 "
        "epochs (the 6-epochs variant, seed 2020) ours stays 30 to 45% below "
        "the reference at every epoch (validation NDCG@10 0.0053 against 0.0074 "
        "after epoch 5, test 0.0036 against 0.0055). Both are at the start of "
        "learning at this budget (lr 1e-3, batch 512). The cause is our "
        "cross-attention (the documented deviation in the table above): ours "
        "with `conditioning: sum` (DiffuRec's approximator, the 6-epochs-sum "
        "variant) follows the reference's curve, validation 0.0068 against "
        "0.0074 and test 0.0051 against 0.0055 (8% below), while ours with its "
        "softmax cross-attention is 30 to 45% below. So the reference's "
        "cross-attention block learns like plain DiffuRec here, and ours learns "
        "more slowly at this budget (one seed; the converged ml-100k table has "
        "DiffuRecSys at DiffuRec's level or above)."
    ),
    "ADRec": (
        "Finding: with its default `hidden_act: gelu` (torch's exact, erf "
        "GELU) ADRec misses the target (rows without a prefix), because the "
        'reference uses the tanh approximation. The rows prefixed "tanh GELU '
        'in ours" repeat the check, on the same inputs and draws, with our '
        "GELU in the tanh form (what `hidden_act: gelu_tanh` selects): every "
        "quantity is then within the target, so the activation accounts for "
        "the whole difference. The training comparison below uses "
        "`gelu_tanh`."
    ),
}


def _model_section(model, run, records=(), page_dir=None):
    reference = REFERENCES[model]
    lines = [
        f"## {model}",
        "",
        f"- Reference: {reference.repository} at commit `{reference.commit}`.",
        f"- Checkout: `{checkout_command(model)}`",
        f"- Equivalence: `python -m benchmarks.parity.equivalence --model={model} "
        f"--reference-dir=/tmp/refs/{model}`",
        "- Run-time patches (applied in memory; nothing of the reference is copied here):",
    ]
    lines += [f"  - {patch}" for patch in reference.patches]
    lines.append("")
    if not run:
        lines += ["Equivalence: not yet measured.", ""]
    else:
        first = run[0]
        commit = first["reference_commit"]
        verified = (
            "verified with git" if first.get("commit_verified") else "not verified"
        )
        lines += [
            f"Equivalence run of {first['date']} ({first.get('dtype', 'float32')}, "
            f"torch {first['torch']}, seed {first.get('seed', 0)}, reference at "
            f"`{commit}`, {verified}):",
            "",
            f"| quantity | max abs diff | target {TARGET:g} | note |",
            "|---|---:|---|---|",
        ]
        for record in run:
            lines.append(
                f"| {_cell(record['quantity'])} | {record['max_abs_diff']:.2e} | "
                f"{_status(record)} | {_cell(record.get('note', ''))} |"
            )
        lines.append("")
        if model in FINDINGS:
            lines += [FINDINGS[model], ""]
    lines += training_section(records, model, page_dir)
    return lines


def render(records, page_dir=None):
    """The page's markdown for ``records`` (figures written to ``page_dir``)."""
    runs = latest_runs(records)
    lines = [
        "# Parity with the reference codes",
        "",
        "Equivalence: our model and the reference code with the same weights "
        "(ours copied into theirs), the same inputs and the same random draws "
        "(noise, steps and lambda injected into both); each row is the largest "
        "absolute difference of one quantity, against a target of "
        f"{TARGET:g}. Both sides run in `eval` mode (no dropout) on tiny "
        "sizes, on the CPU. Where a documented deviation of ours changes the "
        "output, the check either switches ours to the reference's behaviour, "
        "chooses inputs on which both agree, or records the quantity as not "
        "expected to agree; the note says which.",
        "",
        "Page made by `python -m benchmarks.parity.render` from "
        "`benchmarks/results/raw/parity.jsonl`; the latest run of each model "
        "is shown.",
        "",
        "Training parity: ours and the reference code trained on the "
        "reference's own data with the same hyperparameters and epoch budget, "
        "validated after every epoch, at least 2 seeds a side. Ours ranks "
        "every item, the user's history included (RecBole masks no history "
        "for sequential models); where a reference masks it, the model's "
        "notes say so and give its effect. The means agree within noise when "
        "they are within 10% of each other or within 2 pooled standard "
        "deviations.",
        "",
    ]
    summary = [
        "| model | quantities | within target | not expected | missed |",
        "|---|---:|---:|---:|---:|",
    ]
    for model in REFERENCES:
        run = runs.get(model, [])
        within = sum(r["max_abs_diff"] <= TARGET for r in run)
        deviation = sum(
            r["max_abs_diff"] > TARGET and not r.get("expected_equal", True)
            for r in run
        )
        summary.append(
            f"| {model} | {len(run)} | {within} | {deviation} | "
            f"{len(run) - within - deviation} |"
            if run
            else f"| {model} | not yet measured | | | |"
        )
    lines += summary + [""] + training_summary(records)
    for model in REFERENCES:
        lines += _model_section(model, runs.get(model, []), records, page_dir)
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parity.render")
    parser.add_argument("--raw", default=str(DEFAULT_RAW))
    parser.add_argument("--output", default=str(DEFAULT_PAGE))
    args = parser.parse_args(argv)
    page = render(load_records(args.raw), page_dir=Path(args.output).parent)
    Path(args.output).write_text(page, encoding="utf-8")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
