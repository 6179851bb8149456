"""Benchmark protocols: which RecBole parameters each unit runs with.

A *protocol* (``protocols/<name>.yaml``) is a set of RecBole parameters laid
on top of each model's property files (``props/<Model>.yaml``):

.. code-block:: yaml

    description: one paragraph that the rendered page quotes
    seeds: [2020, 2021, 2022]     # --seeds=N runs the first N
    threads: 1                    # torch threads per unit (~: torch's default)
    common: {...}                 # every model, every dataset
    datasets: {ml-1m: {...}}      # every model, on one dataset (and a
                                  # ``models`` mapping inside: one model there)
    models: {DiffuRec: {...}}     # one model (a variant also gets its base's)

``protocols/<name>/<Model>.yaml`` files, when present, extend ``models``.
Precedence, lowest first: common, datasets, models (base, then variant),
datasets.<dataset>.models, then what the harness sets itself (seed,
checkpoint folder, data path).
"""

import hashlib
import json
from pathlib import Path

import yaml

__all__ = [
    "BENCH_DIR",
    "DEFAULT_PROTOCOL",
    "DIFFUSION_MODELS",
    "METRICS",
    "PROTOCOL_DIR",
    "ProtocolError",
    "common_overrides",
    "fingerprint",
    "is_diffusion",
    "load_protocol",
    "unit_overrides",
]

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
PROTOCOL_DIR = BENCH_DIR / "protocols"
DEFAULT_PROTOCOL = "cpu"

# Base names of the diffusion models; every other model is a baseline.
DIFFUSION_MODELS = ("ADRec", "CDDRec", "DiffuRec", "DiffuRecSys")
# Test metrics of the table, in RecBole's names (Hit is HR).
METRICS = ("hit@5", "hit@10", "hit@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@20")


class ProtocolError(ValueError):
    """A protocol file that cannot be used; the message says what to change."""


def is_diffusion(model):
    """Whether ``model`` (``DiffuRecSys-V1`` counts as DiffuRecSys) is a diffusion model."""
    return model.split("-", 1)[0] in DIFFUSION_MODELS


def _read_yaml(path):
    with open(path, encoding="utf-8") as handle:
        content = yaml.safe_load(handle)
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ProtocolError(f"'{path}' must hold a mapping of 'key: value' lines.")
    return content


def _mapping(value, where):
    value = value or {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a mapping, found {type(value).__name__}.")
    return value


def load_protocol(name_or_path):
    """Read a protocol by name (``protocols/<name>.yaml``) or by file path.

    Returns:
        dict: ``name``, ``path``, ``description``, ``seeds``, ``threads``,
        ``common``, ``datasets``, ``models``.
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        path = candidate
    else:
        path = PROTOCOL_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))
        raise ProtocolError(
            f"Protocol '{name_or_path}' not found ({path}). Known: {', '.join(known)}."
        )
    content = _read_yaml(path)
    allowed = {
        "name",
        "description",
        "seeds",
        "threads",
        "common",
        "datasets",
        "models",
        "score_inference_steps",
    }
    unknown = set(content) - allowed
    if unknown:
        raise ProtocolError(
            f"'{path}': unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}. "
            "RecBole parameters go under 'common', 'datasets' or 'models'."
        )
    seeds = content.get("seeds") or [2020, 2021, 2022, 2023, 2024]
    if not isinstance(seeds, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in seeds
    ):
        raise ProtocolError(f"'{path}': seeds must be a list of integers.")
    models = {
        str(k): dict(_mapping(v, f"models.{k}"))
        for k, v in _mapping(content.get("models"), "models").items()
    }
    model_dir = path.parent / path.stem
    if model_dir.is_dir():
        for model_file in sorted(model_dir.glob("*.yaml")):
            models.setdefault(model_file.stem, {}).update(_read_yaml(model_file))
    datasets = {
        str(k): dict(_mapping(v, f"datasets.{k}"))
        for k, v in _mapping(content.get("datasets"), "datasets").items()
    }
    return {
        "name": str(content.get("name") or path.stem),
        "path": str(path),
        "description": " ".join(str(content.get("description") or "").split()),
        "seeds": seeds,
        "threads": content.get("threads"),
        "score_inference_steps": list(content.get("score_inference_steps") or []),
        "common": dict(_mapping(content.get("common"), "common")),
        "datasets": datasets,
        "models": models,
    }


def _model_entries(models, model):
    """The entries of ``models`` for ``model``: its base's first, then its own."""
    base = model.split("-", 1)[0]
    names = [base, model] if base != model else [model]
    return [dict(models.get(name) or {}) for name in names]


def common_overrides(protocol, dataset):
    """The parameters the protocol sets for every model on ``dataset``."""
    overrides = dict(protocol["common"])
    dataset_entry = dict(protocol["datasets"].get(dataset, {}))
    dataset_entry.pop("models", None)
    overrides.update(dataset_entry)
    return overrides


def unit_overrides(protocol, dataset, model):
    """The RecBole parameters the protocol sets for ``model`` on ``dataset``.

    Lowest first: ``common``, ``datasets.<dataset>``, ``models.<Model>``,
    ``datasets.<dataset>.models.<Model>``.
    """
    overrides = dict(protocol["common"])
    dataset_entry = dict(protocol["datasets"].get(dataset, {}))
    dataset_models = _mapping(dataset_entry.pop("models", None), "datasets.models")
    overrides.update(dataset_entry)
    for entry in _model_entries(protocol["models"], model):
        overrides.update(entry)
    for entry in _model_entries(dataset_models, model):
        overrides.update(entry)
    return overrides


def fingerprint(overrides):
    """A short hash of a unit's protocol parameters: a changed protocol reruns it."""
    text = json.dumps(overrides, sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
