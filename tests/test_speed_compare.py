"""The side-by-side step timing of two revisions (benchmarks/speed_compare)."""

import subprocess

from benchmarks.report.speed_compare_page import render_speed_compare
from benchmarks.speed_compare import PROJECT_ROOT, export_revision, measure_child


def test_a_revision_is_exported_as_its_package_and_property_files(tmp_path):
    """Catches an export that takes the working tree instead of the commit, or
    leaves out the property files the old package reads."""
    head = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    commit = export_revision("HEAD", tmp_path)
    assert commit == head
    assert sorted(p.name for p in tmp_path.iterdir()) == ["props", "recbole_diffusion"]
    committed = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "show", "HEAD:props/overall.yaml"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (tmp_path / "props" / "overall.yaml").read_text() == committed


def test_the_child_times_the_trainers_step(tiny_config):
    """Catches a timing loop that skips the optimizer step or the backward
    pass (no FLOPs of the backward), or a block count off by one."""
    overrides = {k: v for k, v in tiny_config.items()}
    result = measure_child(
        {
            "model": "SASRec",
            "dataset": "tiny",
            "overrides": overrides,
            "warmup": 1,
            "steps": 3,
            "rounds": 2,
            "threads": 1,
        }
    )
    assert len(result["ms_per_step_blocks"]) == 2
    assert all(ms > 0 for ms in result["ms_per_step_blocks"])
    assert result["matmul_flops_per_second"] > 1e8
    assert not result["anomaly_mode"]
    # forward + backward: the backward's matrix products double the forward's
    assert result["flops_per_step"] > 0


def _record(model, run_id, old_ms, new_ms, status="ok"):
    return {
        "kind": "speed_compare",
        "run_id": run_id,
        "dataset": "ml-100k",
        "protocol": "cpu",
        "model": model,
        "old_revision": "04f479f6df34be2b2f717388a3bf1290d14764f4",
        "new_revision": "1" * 40,
        "steps": 20,
        "rounds": 3,
        "threads": 1,
        "status": status,
        "old_ms_per_step": old_ms,
        "new_ms_per_step": new_ms,
        "ratio": old_ms / new_ms,
        "old_efficiency": 0.2,
        "new_efficiency": 0.3,
        "new_flops_per_step": 6.5e9,
    }


def test_the_page_shows_each_models_latest_ratio():
    """Catches a page that shows an older run of a model, or mixes up old and new."""
    lines = "\n".join(
        render_speed_compare(
            [
                _record("DiffuRec", "20260101-000000", 300.0, 290.0),
                _record("DiffuRec", "20260102-000000", 300.0, 200.0),
                _record("ADRec", "20260102-000000", 30.0, 25.0),
            ]
        )
    )
    assert "| DiffuRec | 300.0 | 200.0 | **1.50x** |" in lines
    assert "| ADRec | 30.0 | 25.0 | 1.20x |" in lines
    assert "290.0" not in lines
    assert render_speed_compare([]) == []


def test_a_failed_model_stays_on_one_table_row():
    """Catches a child's multi-line error (or a '|' in it) breaking the table."""
    failed = _record("SASRec+", "20260102-000000", 1.0, 1.0, status="failed")
    failed["error"] = "the child failed:\nTraceback ...\nValueError: a | b\n"
    lines = render_speed_compare([failed])
    rows = [line for line in lines if line.startswith("| SASRec+")]
    assert len(rows) == 1 and rows[0].endswith("|")
    assert "ValueError: a / b" in rows[0]
    assert rows[0].count("|") == 8  # seven columns
