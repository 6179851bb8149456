"""Raw benchmark records as a table: one row per unit, and the per-model summary.

The raw file may hold several records of one (model, seed); the newest counts
(``raw.latest_records``). Means are ``statistics.fmean`` and standard
deviations the sample ``statistics.stdev`` (ddof 1) over the seeds that
finished, missing values left out.
"""

import statistics

import pandas as pd

from benchmarks.protocol import METRICS, is_diffusion
from benchmarks.raw import OK, latest_records

__all__ = [
    "COST_KEYS",
    "MODEL_ORDER",
    "model_sort_key",
    "records_table",
    "summarize",
]

MODEL_ORDER = [
    "GRU4Rec",
    "SASRec",
    "SASRec+",
    "BERT4Rec",
    "DuoRec",
    "DiffuRec",
    "DiffuRecSys",
    "CDDRec",
    "ADRec",
]
# Costs averaged over seeds for the page's cost table.
COST_KEYS = (
    "params",
    "seconds_per_epoch",
    "train_seconds",
    "users_per_second",
    "peak_memory_mb",
    "epochs_trained",
    "best_epoch",
)


def model_sort_key(model):
    """Baselines before diffusion models, each in MODEL_ORDER, variants by name."""
    base = model.split("-", 1)[0]
    rank = MODEL_ORDER.index(base) if base in MODEL_ORDER else len(MODEL_ORDER)
    return (is_diffusion(model), rank, model)


def records_table(records):
    """The newest record of each (model, seed) as a DataFrame, one row per unit.

    Columns: model, seed, status, one per test metric (``protocol.METRICS``),
    one per cost (``COST_KEYS``), ``peak_memory_kind``, ``best_stage`` and
    ``record`` (the record itself). Missing values are None, never NaN, so that
    the summary leaves them out exactly as the raw file does.
    """
    rows = []
    for (model, seed), record in latest_records(records).items():
        metrics = record.get("metrics") or {}
        rows.append(
            {
                "model": model,
                "seed": seed,
                "status": record.get("status"),
                **{m: metrics.get(m) for m in METRICS},
                **{key: record.get(key) for key in COST_KEYS},
                "peak_memory_kind": record.get("peak_memory_kind"),
                "best_stage": record.get("best_stage"),
                "record": record,
            }
        )
    columns = [
        "model",
        "seed",
        "status",
        *METRICS,
        *COST_KEYS,
        "peak_memory_kind",
        "best_stage",
        "record",
    ]
    return pd.DataFrame(rows, columns=columns, dtype=object)


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _std(values):
    values = [v for v in values if v is not None]
    return statistics.stdev(values) if len(values) > 1 else None


def summarize(records):
    """Per model: the ok units' test metrics by seed, their mean, std and costs."""
    table = records_table(records)
    finished = table[table["status"] == OK].sort_values("seed", kind="stable")
    summary = {}
    for model in sorted(finished["model"].unique(), key=model_sort_key):
        units = finished[finished["model"] == model]
        seeds = units["seed"].tolist()
        values = {m: dict(zip(seeds, units[m].tolist())) for m in METRICS}
        summary[model] = {
            "n": len(units),
            "seeds": seeds,
            "values": values,
            "mean": {m: _mean(values[m].values()) for m in METRICS},
            "std": {m: _std(values[m].values()) for m in METRICS},
            "cost": {key: _mean(units[key].tolist()) for key in COST_KEYS},
            "peak_memory_kind": units["peak_memory_kind"].iloc[0],
            "best_stages": sorted(
                {stage for stage in units["best_stage"] if stage is not None}
            ),
            "units": units["record"].tolist(),
        }
    return summary
