"""A run's result as a file: metrics, best epoch, checkpoints, time, configuration.

Every training run writes ``<log file stem>.json`` next to RecBole's log file
(``log/<Model>/<Model>-<dataset>-<time>-<hash>.json``), so scripts read results
instead of parsing logs. Only the process that writes checkpoints (rank 0)
writes it.
"""

import datetime
import json
import os
import platform

from recbole_diffusion.trainer.checkpoint import load_checkpoint, to_plain

__all__ = ["SCHEMA", "library_versions", "write_run_result"]

SCHEMA = 1


def library_versions():
    """Versions of the libraries a result depends on."""
    import numpy
    import recbole
    import torch

    import recbole_diffusion

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "recbole": recbole.__version__,
        "numpy": numpy.__version__,
        "recbole_diffusion": recbole_diffusion.__version__,
    }


def _metrics(result):
    return {str(k): float(v) for k, v in (result or {}).items()}


def _best_checkpoint_facts(model_file):
    """Best epoch (and ADRec's stage) from the checkpoint the test used."""
    if not model_file or not os.path.isfile(model_file):
        return {"best_epoch": None}
    checkpoint = load_checkpoint(model_file)
    facts = {"best_epoch": checkpoint.get("epoch")}
    if "adrec_stage" in checkpoint:
        facts["best_stage"] = checkpoint["adrec_stage"]
    return facts


def write_run_result(
    config, trainer, result, log_file, started_at, wall_seconds, resumed_from
):
    """Write the run's JSON result next to its log file; return its path (or None).

    Args:
        config: the run's configuration.
        trainer: the trainer after ``fit`` and the test.
        result (dict): what ``run_recbole_diffusion`` returns.
        log_file (str): the run's log file; the result goes beside it.
        started_at (datetime.datetime): when the run started.
        wall_seconds (float): the run's wall time, data loading included.
        resumed_from (str): the checkpoint the run resumed from, or None.
    """
    if not config["single_spec"] and config["local_rank"] != 0:
        return None
    if log_file is None:
        return None
    record = {
        "schema": SCHEMA,
        "model": config["model_variant"] or config["model"],
        "dataset": config["dataset"],
        "valid_metric": config["valid_metric"],
        "best_valid_score": float(result["best_valid_score"]),
        "valid": _metrics(result["best_valid_result"]),
        "test": _metrics(result["test_result"]),
        **_best_checkpoint_facts(result["model_file"]),
        "checkpoint": result["model_file"],
        "stage_checkpoints": to_plain(getattr(trainer, "stage_files", None)),
        "resumed_from": resumed_from,
        "log_file": log_file,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.datetime.now()
        .astimezone()
        .isoformat(timespec="seconds"),
        "wall_seconds": round(wall_seconds, 3),
        "config": to_plain(dict(config.final_config_dict)),
        "versions": library_versions(),
    }
    path = os.path.splitext(log_file)[0] + ".json"
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, sort_keys=True, allow_nan=True)
        handle.write("\n")
    os.replace(partial, path)
    return path
