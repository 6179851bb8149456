"""The benchmark harness: runner end to end on the tiny dataset, and the page logic.

No timing is asserted: timings are reported, never tested.
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import protocol as protocol_module  # noqa: E402
from benchmarks import render, runner  # noqa: E402

TINY_PROTOCOL = """\
description: seconds-long smoke run on the tiny synthetic dataset
seeds: [2020, 2021]
threads: 1
common:
  epochs: 2
  stopping_step: 2
  train_batch_size: 32
  eval_batch_size: 64
  hidden_size: 16
  embedding_size: 16
  inner_size: 32
  MAX_ITEM_LIST_LENGTH: 10
  worker: 0
models:
  GRU4Rec:
    dropout_prob: 0.2
"""


def _run(args):
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )


def _table_rows(page):
    """{model: [cells]} of the results table of a rendered page."""
    section = page.split("## Results", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| model"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _number(cell):
    return float(re.sub(r"</?u>|\*", "", cell).split("±")[0])


def test_runner_end_to_end_skips_finished_units_and_renders_raw_numbers(tmp_path):
    data_path = write_tiny_dataset(str(tmp_path / "data"))
    inter_file = Path(data_path) / "tiny" / "tiny.inter"
    interactions = len(inter_file.read_text().splitlines()) - 1
    protocol = tmp_path / "tiny.yaml"
    protocol.write_text(TINY_PROTOCOL)
    results = tmp_path / "results"
    args = [
        "--dataset=tiny",
        "--models=SASRec,GRU4Rec",
        "--seeds=1",
        f"--protocol={protocol}",
        f"--data-path={data_path}",
        f"--results-dir={results}",
        f"--work-dir={tmp_path / 'work'}",
    ]
    first = _run(args)
    assert first.returncode == 0, first.stdout + first.stderr
    raw = results / "raw" / "tiny.tiny.jsonl"
    records = [json.loads(line) for line in raw.read_text().splitlines()]
    assert [(r["model"], r["seed"]) for r in records] == [
        ("SASRec", 2020),
        ("GRU4Rec", 2020),
    ]
    for record in records:
        assert record["status"] == "ok", record.get("error")
        assert set(protocol_module.METRICS) <= set(record["metrics"])
        assert record["best_epoch"] in (0, 1)
        assert record["epochs_trained"] == 2
        assert len(record["valid_curve"]) == 2
        assert record["params"] > 0
        assert record["users_per_second"] > 0
        assert record["peak_memory_mb"] > 0
        assert record["dataset_stats"]["users"] == 60
        # interactions as loaded, not the augmented rows of the built dataset
        assert record["dataset_stats"]["interactions"] == interactions
        assert record["config"]["hidden_size"] == 16
        assert record["versions"]["recbole"] == "1.2.1"
        assert record["machine"]["cpu_count"] >= 1
    gru = records[1]
    assert gru["overrides"]["dropout_prob"] == 0.2
    assert gru["config"]["dropout_prob"] == 0.2

    second = _run(args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 units run" in second.stdout and "2 skipped" in second.stdout
    assert len(raw.read_text().splitlines()) == 2

    page = (results / "tiny.tiny.md").read_text()
    assert (results / "tiny.tiny.png").is_file()
    rows = _table_rows(page)
    for record in records:
        cells = rows[record["model"]]
        assert cells[0] == "1"  # seeds
        for cell, metric in zip(cells[1:], protocol_module.METRICS):
            assert _number(cell) == pytest.approx(record["metrics"][metric], abs=5e-5)
    assert "None." in page.split("## Failed or diverged units", 1)[1]


def _unit(model, seed, ndcg, status="ok", **metrics):
    values = {m: ndcg for m in protocol_module.METRICS}
    values.update(metrics)
    return {
        "kind": "unit",
        "model": model,
        "seed": seed,
        "status": status,
        "metrics": values,
        "params": 100,
        "users_per_second": 10.0,
        "overrides": {"hidden_size": 64},
        "error": None if status == "ok" else "boom",
    }


def _hand_records():
    return [
        _unit("SASRec", 1, 0.10),
        _unit("SASRec", 2, 0.12),
        _unit("SASRec", 3, 0.11),
        _unit("GRU4Rec", 1, 0.05),
        _unit("GRU4Rec", 2, 0.06),
        _unit("GRU4Rec", 3, 0.07),
        _unit("DiffuRec", 1, 0.13),
        _unit("DiffuRec", 2, 0.14),
        _unit("DiffuRec", 3, 0.15),
        _unit("DiffuRecSys", 1, 0.10),
        _unit("DiffuRecSys", 2, 0.12),
        # a failed first try of seed 3, then its retry: the retry counts
        _unit("DiffuRecSys", 3, 0.0, status="failed"),
        _unit("DiffuRecSys", 3, 0.14),
        _unit("DuoRec", 1, 0.0, status="diverged"),
    ]


def test_summary_marks_best_bold_second_underlined_and_the_gain():
    summary = render.summarize(_hand_records())
    assert list(summary) == ["GRU4Rec", "SASRec", "DiffuRec", "DiffuRecSys"]
    assert summary["DiffuRecSys"]["n"] == 3
    assert summary["DiffuRec"]["mean"]["ndcg@10"] == pytest.approx(0.14)
    assert summary["DiffuRec"]["std"]["ndcg@10"] == pytest.approx(0.01)
    marks = render.mark_best({m: s["mean"]["ndcg@10"] for m, s in summary.items()})
    assert marks == {
        "GRU4Rec": None,
        "SASRec": None,
        "DiffuRec": "best",
        "DiffuRecSys": "second",
    }
    assert render.mark_best({"a": 1.0, "b": 1.0, "c": 0.5}) == {
        "a": "best",
        "b": "best",
        "c": "second",
    }
    diffusion, baseline, gain = render.improvement(summary, "ndcg@10")
    assert (diffusion, baseline) == ("DiffuRec", "SASRec")
    assert gain == pytest.approx(0.14 / 0.11 - 1)

    rows = _table_rows(render.render_page(_hand_records(), "hand", "cpu"))
    assert rows["DiffuRec"][5] == "**0.1400 ± 0.0100**"  # NDCG@10
    assert rows["DiffuRecSys"][5] == "<u>0.1200 ± 0.0200</u>"
    assert rows["SASRec"][5] == "0.1100 ± 0.0100"
    assert "+27.3% (DiffuRec vs SASRec)" in rows["*best diffusion vs best baseline*"]


def test_paired_ttest_is_one_sided_over_shared_seeds():
    from scipy import stats

    model = {1: 0.13, 2: 0.15, 3: 0.14, 4: 0.2}
    baseline = {1: 0.10, 2: 0.12, 3: 0.12}
    result = render.paired_ttest(model, baseline)
    # paired by seed: seed 4 has no partner and is left out
    differences = [0.03, 0.03, 0.02]
    mean = sum(differences) / 3
    sd = (sum((d - mean) ** 2 for d in differences) / 2) ** 0.5
    t = mean / (sd / 3**0.5)
    assert result["n"] == 3
    assert result["mean_diff"] == pytest.approx(mean)
    assert result["t"] == pytest.approx(t)
    assert result["p"] == pytest.approx(stats.t.sf(t, df=2))
    reverse = render.paired_ttest(baseline, model)
    assert reverse["p"] == pytest.approx(1 - result["p"])
    assert render.paired_ttest({1: 0.2}, {1: 0.1})["note"] == "n < 2"
    constant = render.paired_ttest({1: 0.2, 2: 0.3}, {1: 0.1, 2: 0.2})
    assert constant["p"] is None and "variance" in constant["note"]


def test_page_lists_failed_units_and_tests_against_the_best_baseline():
    page = render.render_page(_hand_records(), "hand", "cpu")
    failed = page.split("## Failed or diverged units", 1)[1]
    assert "DuoRec seed 1: **diverged**: boom" in failed
    assert "DiffuRecSys seed 3" not in failed  # its retry succeeded
    significance = page.split("## Significance", 1)[1].split("\n## ", 1)[0]
    assert "**SASRec**" in significance and "One-sided" in significance
    line = next(
        row
        for row in significance.splitlines()
        if row.startswith("| DiffuRec | NDCG@10")
    )
    expected = render.paired_ttest(
        {1: 0.13, 2: 0.14, 3: 0.15}, {1: 0.1, 2: 0.12, 3: 0.11}
    )
    assert f"{expected['p']:.3f}" in line


def _progress(model, seed, curve, fingerprint="f1"):
    return {
        "model": model,
        "seed": seed,
        "fingerprint": fingerprint,
        "status": "running",
        "epochs_trained": len(curve),
        "epoch": len(curve) - 1,
        "stage": None,
        "best_valid_so_far": max(curve),
        "valid_curve": [[epoch, score] for epoch, score in enumerate(curve)],
        "epoch_seconds": [1.0] * len(curve),
        "updated_at": "2026-12-08T00:00:00+0000",
    }


def test_page_shows_units_in_progress_and_a_failed_unit_running_again():
    """Catches a unit in progress left off the page (shown as missing), its
    epoch or best score misread, a unit whose record is in the table still
    listed as running, and a failed unit that --retry-failed continues shown
    only as failed."""
    records = [
        {**_unit("SASRec", 1, 0.10), "fingerprint": "f1"},
        {**_unit("SASRec", 2, 0.12), "fingerprint": "f1"},
        {**_unit("CDDRec", 1, 0.0, status="failed"), "fingerprint": "f1"},
        {**_unit("DuoRec", 1, 0.0, status="failed"), "fingerprint": "f1"},
    ]
    progress = [
        _progress("CDDRec", 1, [0.01, 0.05, 0.04]),  # the failed unit, again
        _progress("ADRec", 2, [0.02, 0.03]),  # no record yet
        _progress("SASRec", 2, [0.12]),  # finished: its record is in the table
    ]
    page = render.render_page(records, "hand", "converged", progress=progress)
    running = page.split("## Units in progress", 1)[1].split("\n## ", 1)[0]
    assert "- CDDRec seed 1: running: epoch 3, best valid NDCG@10 so far 0.0500" in (
        running
    )
    assert "- ADRec seed 2: running: epoch 2, best valid NDCG@10 so far 0.0300" in (
        running
    )
    assert "SASRec" not in running
    failed = page.split("## Failed or diverged units", 1)[1]
    cddrec = next(row for row in failed.splitlines() if "CDDRec seed 1" in row)
    duorec = next(row for row in failed.splitlines() if "DuoRec seed 1" in row)
    assert "running again" in cddrec and "running again" not in duorec


def test_published_numbers_pair_each_paper_row_with_ours_only():
    records = [
        _unit("SASRec", 1, 0.03),
        _unit("DiffuRec", 1, 0.02),
        _unit("CDDRec", 1, 0.04, **{"hit@20": 0.10, "ndcg@20": 0.05}),
        _unit("ADRec", 1, 0.05, **{"hit@20": 0.12, "ndcg@20": 0.04}),
    ]
    page = render.render_page(records, "amazon-beauty", "cpu")
    section = page.split("## Published numbers", 1)[1].split("\n## ", 1)[0]
    tables = section.split("Source: ")[1:]
    diffurecsys, cddrec, adrec = tables
    # each paper table lists our row only beside a model that paper reports
    assert "| SASRec (ours) | 0.0300 |" in diffurecsys
    assert "| DiffuRec (ours) | 0.0200 |" in diffurecsys
    assert "CDDRec (ours)" not in diffurecsys and "ADRec (ours)" not in diffurecsys
    assert "| CDDRec (ours) | 0.0400 |" in cddrec and "DiffuRec (ours)" not in cddrec
    # ADRec's paper gives only relative gains: ours is the same ratio, against the
    # best other diffusion model in each column (CDDRec on both here)
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in adrec.splitlines()
        if line.startswith("| HR@20") or line.startswith("| NDCG@20")
    }
    assert rows["HR@20"][1:] == ["+15.45%", "0.1200", "CDDRec 0.1000", "+20.00%"]
    assert rows["NDCG@20"][1:] == ["+13.02%", "0.0400", "CDDRec 0.0500", "-20.00%"]
    assert "Published numbers" not in render.render_page(records, "hand", "cpu")


def test_page_states_how_many_units_ran_at_once():
    def timed(model, start, end):
        return dict(
            _unit(model, 1, 0.1),
            started_at=f"2026-01-01T{start}:00+00:00",
            finished_at=f"2026-01-01T{end}:00+00:00",
        )

    in_turn = [timed("SASRec", "00:00", "01:00"), timed("GRU4Rec", "01:00", "02:00")]
    assert render.most_at_once(in_turn) == 1
    assert "run one at a time" in render.render_page(in_turn, "hand", "cpu")
    side_by_side = in_turn + [timed("DiffuRec", "00:30", "01:30")]
    assert render.most_at_once(side_by_side) == 2
    page = render.render_page(side_by_side, "hand", "cpu")
    assert "at most 2 at a time" in page and "run one at a time" not in page


def test_plan_skips_finished_units_and_reruns_a_changed_protocol(tmp_path):
    protocol = tmp_path / "p.yaml"
    protocol.write_text(TINY_PROTOCOL)
    loaded = protocol_module.load_protocol(str(protocol))
    overrides = protocol_module.unit_overrides(loaded, "tiny", "GRU4Rec")
    assert overrides["dropout_prob"] == 0.2 and overrides["hidden_size"] == 16
    stamp = protocol_module.fingerprint(overrides)
    records = [
        {
            "kind": "unit",
            "model": "GRU4Rec",
            "seed": 2020,
            "status": "ok",
            "fingerprint": stamp,
        },
        {
            "kind": "unit",
            "model": "GRU4Rec",
            "seed": 2021,
            "status": "failed",
            "fingerprint": stamp,
        },
        {
            "kind": "unit",
            "model": "SASRec",
            "seed": 2020,
            "status": "ok",
            "fingerprint": "old",
        },
    ]
    to_run, skipped = runner.plan_units(
        "tiny", ["GRU4Rec", "SASRec"], 2, loaded, records
    )
    assert [(u["model"], u["seed"]) for u in skipped] == [
        ("GRU4Rec", 2020),
        ("GRU4Rec", 2021),
    ]
    assert [(u["model"], u["seed"]) for u in to_run] == [
        ("SASRec", 2020),
        ("SASRec", 2021),
    ]
    to_run, _ = runner.plan_units(
        "tiny", ["GRU4Rec"], 2, loaded, records, retry_failed=True
    )
    assert [(u["model"], u["seed"]) for u in to_run] == [("GRU4Rec", 2021)]
    with pytest.raises(protocol_module.ProtocolError):
        runner.plan_units("tiny", ["GRU4Rec"], 3, loaded, records)


def test_shipped_protocols_load():
    for name in ("cpu", "paper"):
        protocol = protocol_module.load_protocol(name)
        assert len(protocol["seeds"]) >= 3
        assert protocol["description"]


def test_speed_page_gives_ratios_to_sasrec_of_the_same_run():
    def speed(model, run_id, steps, users, inference=()):
        return {
            "kind": "speed",
            "run_id": run_id,
            "dataset": "hand",
            "protocol": "cpu",
            "model": model,
            "status": "ok",
            "params": 10,
            "train_steps_per_second": steps,
            "users_per_second": users,
            "warmup_steps": 3,
            "train_steps": 20,
            "inference": list(inference),
        }

    records = [
        speed("SASRec", "old", 1.0, 1.0),
        speed("SASRec", "new", 4.0, 100.0),
        speed(
            "DiffuRec",
            "new",
            2.0,
            5.0,
            [{"inference_steps": 4, "users_per_second": 50.0, "ndcg@10": None}],
        ),
    ]
    page = render.render_speed(records)
    assert "| DiffuRec | 10 | – | 2.00 | 0.50× | 5.0 | 0.05× |" in page
    assert "| DiffuRec | 4 | 50.0 | 0.50× | – (no trained model) |" in page
    assert "run `new`" in page and "run `old`" not in page
    # a run under another protocol gets its own section, not replacing this one
    other = dict(speed("SASRec", "paper-run", 1.0, 10.0), protocol="paper")
    page = render.render_speed(records + [other])
    assert "## hand\n" in page and "## hand, `paper` protocol" in page
    assert "run `new`" in page and "run `paper-run`" in page


@pytest.mark.parametrize(
    "model, extra_field",
    [
        ("DiffuRec", "train_steps_per_second_untrimmed"),
        ("ADRec", "users_per_second_uncached"),
    ],
)
def test_speed_child_measures_trimming_and_cache_switches(tmp_path, model, extra_field):
    from benchmarks.speed import execute_speed

    data_path = write_tiny_dataset(str(tmp_path / "data"))
    overrides = {
        "hidden_size": 16,
        "inner_size": 32,
        "MAX_ITEM_LIST_LENGTH": 10,
        "diffusion_steps": 8,
        "train_batch_size": 16,
        "eval_batch_size": 64,
        "worker": 0,
    }
    spec = {
        "run_id": "t",
        "dataset": "tiny",
        "protocol": "tiny",
        "model": model,
        "overrides": overrides,
        "fingerprint": "f",
        "seed": 2020,
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "data_path": data_path,
        "threads": 1,
        "train_steps": 2,
        "warmup_steps": 1,
        "max_users": 32,
        "inference_steps": [8, 4],
        "trained_model_file": None,
    }
    record = execute_speed(spec)
    assert record["status"] == "ok", record["error"]
    assert record[extra_field] > 0
    # a pass is max_users users, though an evaluation batch holds 64
    assert record["users_measured"] == 32
    assert all(row["users_measured"] == 32 for row in record["inference"])
    assert [row["inference_steps"] for row in record["inference"]] == [8, 4]
    sasrec = dict(record, model="SASRec", inference=[])
    for key in ("train_steps_per_second_untrimmed", "users_per_second_uncached"):
        sasrec.pop(key, None)
    page = render.render_speed([sasrec, record])
    heading = "Trimming padding" if model == "DiffuRec" else "Cached last-token"
    assert heading in page


def test_readme_block_is_replaced_between_its_markers_only(tmp_path):
    summary = render.summarize(
        [
            {
                "model": model,
                "seed": 2020,
                "status": "ok",
                "metrics": {metric: value for metric in protocol_module.METRICS},
            }
            for model, value in (("SASRec", 0.5), ("ADRec", 0.25))
        ]
    )
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- results:hand:start -->\nSTALE TABLE\n<!-- results:hand:end -->\nrest\n"
    )
    assert render.update_readme(readme, "hand", summary, tmp_path)
    text = readme.read_text()
    assert text.startswith("intro\n<!-- results:hand:start -->\n")
    assert text.endswith("<!-- results:hand:end -->\nrest\n")
    assert "STALE TABLE" not in text and "| ADRec | 1 |" in text
    assert "hand.png)" in text and "hand.md" in text
    # a README without the markers is left alone
    plain = tmp_path / "PLAIN.md"
    plain.write_text("nothing to replace\n")
    assert not render.update_readme(plain, "hand", summary, tmp_path)
    assert plain.read_text() == "nothing to replace\n"


def _write_raw(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def test_compare_arms_is_unpaired_with_known_p_values(tmp_path, capsys):
    """Catches a paired test (seed s of one setting is unrelated to seed s of
    the other), a one-sided p, the population instead of the sample standard
    deviation, failed units counted, and a later file's unit not replacing an
    earlier one's. Reference values by hand: a = 1, 2, 3 against b = 4, 5, 6
    gives Welch t = -3 / sqrt(2/3) = -3.674 with 4 degrees of freedom,
    two-sided p 0.0213; Mann-Whitney U = 0, exact two-sided p 2/20 = 0.1."""
    from benchmarks import compare_arms

    first = _write_raw(
        tmp_path / "a1.jsonl",
        [_unit("CDDRec", 1, 1.0), _unit("CDDRec", 2, 9.0), _unit("SASRec", 1, 7.0)],
    )
    second = _write_raw(
        tmp_path / "a2.jsonl",
        [
            _unit("CDDRec", 2, 2.0),
            _unit("CDDRec", 3, 3.0),
            _unit("CDDRec", 4, 0.0, "failed"),
        ],
    )
    other = _write_raw(
        tmp_path / "b.jsonl",
        # seeds that pair 6-4-5 with the other arm's 1-2-3: a paired test of
        # these would differ from the unpaired one
        [_unit("CDDRec", 1, 6.0), _unit("CDDRec", 2, 4.0), _unit("CDDRec", 3, 5.0)],
    )
    values_a = compare_arms.arm_values([first, second], "CDDRec", "test:ndcg@10")
    assert values_a == {1: 1.0, 2: 2.0, 3: 3.0}
    result = compare_arms.compare(
        values_a.values(),
        compare_arms.arm_values([other], "CDDRec", "test:ndcg@10").values(),
    )
    assert result["mean"] == (2.0, 5.0)
    assert result["std"] == (1.0, 1.0)
    assert result["welch_p"] == pytest.approx(0.02131, abs=5e-5)
    assert result["mann_whitney_p"] == pytest.approx(0.1)

    assert (
        compare_arms.main(
            [
                "--model=CDDRec",
                f"--arm-a={first},{second}",
                f"--arm-b={other}",
                "--metrics=test:ndcg@10",
            ]
        )
        == 0
    )
    row = capsys.readouterr().out.splitlines()[2]
    assert row.split("|")[1:-1] == [
        " test:ndcg@10 ", " 3 ", " 2.0000 ± 1.0000 ", " 3 ", " 5.0000 ± 1.0000 ",
        " -3.0000 ", " 0.021 ", " 0.100 ",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        compare_arms.main(
            ["--model=CDDRec", "--arm-a=missing.jsonl", f"--arm-b={other}"]
        )
    assert exit_info.value.code == 2


def test_compare_arms_welch_valid_split_and_refusals(tmp_path):
    """Catches Student's pooled t-test in place of Welch's (unequal variances
    and sizes tell them apart), the valid split read from the test metrics,
    a later failed unit leaving an earlier value in, and a malformed metric
    or units of two datasets accepted."""
    from scipy.stats import t as t_distribution

    from benchmarks import compare_arms

    def unit(seed, test, valid, status="ok", dataset="ml-100k"):
        record = _unit("CDDRec", seed, test, status=status)
        record["valid_metrics"] = {"ndcg@10": valid}
        record["dataset"] = dataset
        return record

    arm_a = _write_raw(
        tmp_path / "a.jsonl",
        [unit(1, 1.0, 10.0), unit(2, 2.0, 20.0), unit(3, 3.0, 30.0)],
    )
    arm_b = _write_raw(
        tmp_path / "b.jsonl",
        [unit(s, v, 0.0) for s, v in zip(range(1, 5), (4.0, 6.0, 8.0, 10.0))],
    )
    later = _write_raw(tmp_path / "later.jsonl", [unit(3, 0.0, 0.0, status="failed")])
    result = compare_arms.compare(
        compare_arms.arm_values([arm_a], "CDDRec", "test:ndcg@10").values(),
        compare_arms.arm_values([arm_b], "CDDRec", "test:ndcg@10").values(),
    )
    # Welch by hand: variances 1 and 20/3, sizes 3 and 4
    se2_a, se2_b = 1.0 / 3, (20.0 / 3) / 4
    t = (2.0 - 7.0) / math.sqrt(se2_a + se2_b)
    dof = (se2_a + se2_b) ** 2 / (se2_a**2 / 2 + se2_b**2 / 3)
    assert result["welch_p"] == pytest.approx(
        2 * t_distribution.sf(abs(t), dof), rel=1e-9
    )
    assert compare_arms.arm_values([arm_a], "CDDRec", "valid:ndcg@10") == {
        1: 10.0,
        2: 20.0,
        3: 30.0,
    }
    assert compare_arms.arm_values([arm_a, later], "CDDRec", "test:ndcg@10") == {
        1: 1.0,
        2: 2.0,
    }
    other_dataset = _write_raw(
        tmp_path / "c.jsonl", [unit(9, 1.0, 1.0, dataset="beauty")]
    )
    for arguments in (
        ["--metrics=ndcg@10"],
        ["--metrics=train:ndcg@10"],
        ["--metrics=test:ndcg@99"],
        [f"--arm-a={arm_a},{other_dataset}"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            compare_arms.main(
                ["--model=CDDRec", f"--arm-a={arm_a}", f"--arm-b={arm_b}", *arguments]
            )
        assert exit_info.value.code == 2
