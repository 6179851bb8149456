"""Model and trainer lookup by name: the plugin's first, then RecBole's.

The lookups try the plugin first and fall back to RecBole, so plugin models
and RecBole's baselines run through the same command. RecBole's own
``get_model`` fails on an unknown name with an unrelated ``lightgbm`` import
error; ours says what is available and suggests the closest name.

This module sits above ``model/`` and ``trainer/`` (it imports them by name),
so nothing below it may import it.
"""

import importlib
import importlib.util
import pkgutil
from contextlib import contextmanager

import torch
from recbole.utils import ModelType

from recbole_diffusion.utils import ConfigError, _closest

__all__ = [
    "MODEL_ALIASES",
    "UnknownModelError",
    "available_models",
    "get_model",
    "get_trainer",
]

# Model names that are not Python identifiers, and the class each one names.
MODEL_ALIASES = {"SASRec+": "SASRecPlus"}

# RecBole's model packages, searched in this order.
_RECBOLE_MODEL_PACKAGES = [
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
]


class UnknownModelError(ConfigError):
    """A model name that neither the plugin nor RecBole knows."""


@contextmanager
def _anomaly_mode_kept():
    """Leave torch's anomaly mode as it was across a model module's import.

    Importing ``recbole.model.sequential_recommender`` runs ``sine.py``, which
    calls ``torch.autograd.set_detect_anomaly(True)`` for the whole process:
    every backward pass then checks every gradient for NaN and every forward
    pass records a traceback per operation, which made SASRec+ and DuoRec
    train 1.8x slower (SASRec+ and DuoRec import RecBole's SASRec, so the
    plugin's modules are imported under it too). The trainers set the mode
    from ``detect_anomaly``.
    """
    anomaly = torch.is_anomaly_enabled()
    try:
        yield
    finally:
        torch.autograd.set_detect_anomaly(anomaly)


def _plugin_model_modules():
    from recbole_diffusion import model as plugin_models

    return [m.name for m in pkgutil.iter_modules(plugin_models.__path__)]


def available_models():
    """Names of the models the run command accepts: the plugin's and RecBole's."""
    names = []
    for module_name in _plugin_model_modules():
        with _anomaly_mode_kept():
            module = importlib.import_module(f"recbole_diffusion.model.{module_name}")
        names += _classes_named_like(module, module_name)
    for package in _RECBOLE_MODEL_PACKAGES:
        for module_name in _recbole_modules(package):
            try:
                with _anomaly_mode_kept():
                    module = importlib.import_module(
                        f"recbole.model.{package}.{module_name}"
                    )
            except ImportError:  # an optional library (lightgbm, xgboost) is absent
                continue
            names += _classes_named_like(module, module_name)
    names += [alias for alias, name in MODEL_ALIASES.items() if name in names]
    return sorted(set(names), key=str.lower)


def _classes_named_like(module, module_name):
    return [
        attr
        for attr, value in vars(module).items()
        if attr.lower() == module_name and isinstance(value, type)
    ]


def _recbole_modules(package):
    # find_spec does not run the package's __init__, which for exlib_recommender
    # imports lightgbm and xgboost.
    spec = importlib.util.find_spec(f"recbole.model.{package}")
    return {m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)}


def get_model(model_name):
    """Return the model class called ``model_name``: the plugin's, else RecBole's.

    Raises:
        UnknownModelError: no such model; the message lists the available ones.
    """
    if not isinstance(model_name, str) or not model_name:
        raise UnknownModelError(f"A model name is required, got {model_name!r}.")
    model_name = MODEL_ALIASES.get(model_name, model_name)
    module_name = model_name.lower()
    if module_name in _plugin_model_modules():
        with _anomaly_mode_kept():
            module = importlib.import_module(f"recbole_diffusion.model.{module_name}")
        if hasattr(module, model_name):
            return getattr(module, model_name)
    for package in _RECBOLE_MODEL_PACKAGES:
        # exlib models import optional libraries (lightgbm, xgboost): only
        # import a module that exists, so a missing library is not misreported.
        if module_name not in _recbole_modules(package):
            continue
        try:
            with _anomaly_mode_kept():
                module = importlib.import_module(
                    f"recbole.model.{package}.{module_name}"
                )
        except ImportError as error:
            raise ConfigError(
                f"Model '{model_name}' needs the optional library '{error.name}': "
                f"install it with pip install {error.name}."
            ) from error
        if hasattr(module, model_name):
            return getattr(module, model_name)
    names = available_models()
    hint = _closest(model_name, names)
    raise UnknownModelError(
        f"Unknown model '{model_name}'.{hint} Available models: {', '.join(names)}."
    )


def get_trainer(model_type, model_name):
    """Return the trainer class for a model.

    Looks for ``<model_name>Trainer`` in the plugin, then in RecBole; otherwise
    the plugin's trainer for the model type, whose checkpoints load with
    ``torch.load(weights_only=True)``.
    """
    plugin_trainers = importlib.import_module("recbole_diffusion.trainer")
    trainer_name = f"{model_name}Trainer"
    if hasattr(plugin_trainers, trainer_name):
        return getattr(plugin_trainers, trainer_name)
    recbole_trainers = importlib.import_module("recbole.trainer")
    if hasattr(recbole_trainers, trainer_name):
        return plugin_trainers.make_safe(getattr(recbole_trainers, trainer_name))
    if model_type == ModelType.KNOWLEDGE:
        return plugin_trainers.make_safe(recbole_trainers.KGTrainer)
    if model_type == ModelType.TRADITIONAL:
        return plugin_trainers.make_safe(recbole_trainers.TraditionalTrainer)
    return plugin_trainers.Trainer
