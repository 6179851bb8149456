"""Model and trainer lookup, and the checks that refuse bad configuration early.

The lookups try the plugin first and fall back to RecBole, so plugin models
and RecBole's baselines run through the same command. RecBole's own
``get_model`` fails on an unknown name with an unrelated ``lightgbm`` import
error; ours says what is available and suggests the closest name.
"""

import difflib
import importlib
import importlib.util
import pkgutil

from recbole.utils import ModelType

__all__ = [
    "ConfigError",
    "UnknownModelError",
    "available_models",
    "check_choice",
    "check_non_negative",
    "check_positive_int",
    "check_probability",
    "get_model",
    "get_trainer",
]

# RecBole's model packages, by the model type they hold.
# Model names that are not Python identifiers, and the class each one names.
MODEL_ALIASES = {"SASRec+": "SASRecPlus"}

_RECBOLE_MODEL_PACKAGES = [
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
]


class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to change."""


class UnknownModelError(ConfigError):
    """A model name that neither the plugin nor RecBole knows."""


# --------------------------------------------------------------------------- #
# configuration checks used by every plugin model's ``validate_config``
# --------------------------------------------------------------------------- #
def config_value(config, key, default=None):
    """``config[key]``, or ``default`` when unset (a RecBole Config or a dict)."""
    try:
        value = config[key]
    except KeyError:
        return default
    return default if value is None else value


LR_SCHEDULERS = ("none", "cosine", "step")


def check_lr_schedule(config):
    """Refuse an ``lr_scheduler`` (and its step-decay settings) that cannot run."""
    scheduler = config_value(config, "lr_scheduler", "none")
    check_choice({"lr_scheduler": scheduler}, "lr_scheduler", LR_SCHEDULERS)
    if scheduler != "step":
        return
    milestones = config_value(config, "lr_milestones")
    if (
        not isinstance(milestones, (list, tuple))
        or not milestones
        or any(
            isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in milestones
        )
    ):
        raise ConfigError(
            f"lr_milestones={milestones!r} is invalid: lr_scheduler=step needs a "
            "list of epochs >= 1 at which to decay, e.g. lr_milestones: [30]."
        )
    gamma = config_value(config, "lr_gamma")
    if (
        isinstance(gamma, bool)
        or not isinstance(gamma, (int, float))
        or not 0 < gamma <= 1
    ):
        raise ConfigError(
            f"lr_gamma={gamma!r} is invalid: the step-decay factor must be in "
            "(0, 1], e.g. lr_gamma: 0.1."
        )


def check_heads_divide_hidden(config):
    """Refuse a ``hidden_size`` that ``n_heads`` attention heads cannot split."""
    hidden_size, n_heads = config["hidden_size"], config["n_heads"]
    if hidden_size % n_heads:
        raise ConfigError(
            f"hidden_size={hidden_size} is not divisible by n_heads={n_heads}: "
            "choose n_heads dividing hidden_size."
        )


def check_positive_int(config, key):
    """Refuse ``config[key]`` unless it is an integer >= 1."""
    value = config_value(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{key}={value!r} is invalid: it must be a positive integer "
            f"(set e.g. --{key}=1 or higher)."
        )
    return value


def check_non_negative(config, key):
    """Refuse ``config[key]`` unless it is a number >= 0."""
    value = config_value(config, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(
            f"{key}={value!r} is invalid: it must be a number >= 0 "
            f"(set e.g. --{key}=0)."
        )
    return value


def check_probability(config, key):
    """Refuse ``config[key]`` unless it is a probability in [0, 1)."""
    value = config_value(config, key)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 <= value < 1
    ):
        raise ConfigError(
            f"{key}={value!r} is invalid: it must be a probability in [0, 1) "
            f"(set e.g. --{key}=0.1)."
        )
    return value


def check_choice(config, key, choices):
    """Refuse ``config[key]`` unless it is one of ``choices``."""
    value = config_value(config, key)
    if value not in choices:
        allowed = ", ".join(map(str, choices))
        hint = _closest(str(value), [str(c) for c in choices])
        raise ConfigError(f"{key}={value!r} is invalid: choose one of {allowed}.{hint}")
    return value


def _closest(name, candidates):
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if not match:
        lowered = {c.lower(): c for c in candidates}
        if name.lower() in lowered:
            match = [lowered[name.lower()]]
    return f" Did you mean '{match[0]}'?" if match else ""


# --------------------------------------------------------------------------- #
# model lookup
# --------------------------------------------------------------------------- #
def _plugin_model_modules():
    from recbole_diffusion import model as plugin_models

    return [m.name for m in pkgutil.iter_modules(plugin_models.__path__)]


def available_models():
    """Names of the models the run command accepts: the plugin's and RecBole's."""
    names = []
    for module_name in _plugin_model_modules():
        module = importlib.import_module(f"recbole_diffusion.model.{module_name}")
        names += _classes_named_like(module, module_name)
    for package in _RECBOLE_MODEL_PACKAGES:
        for module_name in _recbole_modules(package):
            try:
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
        module = importlib.import_module(f"recbole_diffusion.model.{module_name}")
        if hasattr(module, model_name):
            return getattr(module, model_name)
    for package in _RECBOLE_MODEL_PACKAGES:
        # exlib models import optional libraries (lightgbm, xgboost): only
        # import a module that exists, so a missing library is not misreported.
        if module_name not in _recbole_modules(package):
            continue
        try:
            module = importlib.import_module(f"recbole.model.{package}.{module_name}")
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
