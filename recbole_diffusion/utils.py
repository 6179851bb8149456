"""The checks that refuse bad configuration early, and the error they raise.

This module sits at the bottom of the package: models, trainers and the
configuration import it, and it imports nothing of the package. The model and
trainer lookups live above it, in ``recbole_diffusion.registry``.
"""

import difflib

__all__ = [
    "ConfigError",
    "check_choice",
    "check_non_negative",
    "check_positive_int",
    "check_probability",
    "config_value",
]


class ConfigError(ValueError):
    """A configuration that cannot work; the message says what to change."""


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
