"""Range and type checks of RecBole's own settings, for every model.

The plugin's models check their own hyperparameters (``validate_config``);
RecBole checks almost none of its keys, so a zero batch size or a dropout of
1.5 ends in a traceback from torch or RecBole, and a negative ``epochs``
trains nothing and reports an untrained model. These checks run on the
resolved configuration, before any data is loaded or any model is built, for
RecBole's baselines as for the plugin's models. Keys a model does not have
are skipped.

This module imports nothing of torch or RecBole.
"""

from recbole_diffusion.utils import ConfigError

__all__ = ["check_recbole_settings"]

_POSITIVE_INTS = (
    "epochs",
    "train_batch_size",
    "eval_batch_size",
    "MAX_ITEM_LIST_LENGTH",
    "eval_step",
    "stopping_step",
    "hidden_size",
    "embedding_size",
    "inner_size",
    "n_layers",
    "n_heads",
    "num_layers",
)
_NON_NEGATIVE_INTS = ("worker", "loss_decimal_place", "metric_decimal_place")
_NON_NEGATIVE_NUMBERS = ("weight_decay",)
_BOOLS = (
    "use_gpu",
    "reproducibility",
    "show_progress",
    "shuffle",
    "repeatable",
    "enable_amp",
    "enable_scaler",
    "log_wandb",
    "save_dataset",
    "save_dataloaders",
    "fast_dropout",
    "fast_gelu",
    "fast_cross_entropy",
    "detect_anomaly",
    "malloc_keep_memory",
    "fused_optimizer",
    "fast_info_nce",
    "fused_qkv",
    "step_embedding_table",
    "last_position_only",
)
_EXAMPLES = {"epochs": 200, "train_batch_size": 256, "MAX_ITEM_LIST_LENGTH": 50}


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_dropout_key(key):
    if key in _BOOLS:  # fast_dropout is a switch, not a probability
        return False
    return key == "dropout" or key.endswith("dropout_prob") or key.endswith("_dropout")


def _refuse(key, value, wanted, example):
    raise ConfigError(
        f"{key}={value!r} is invalid: it must be {wanted} (set e.g. --{key}={example})."
    )


def check_recbole_settings(config):
    """Refuse a RecBole setting of the wrong type or range.

    Args:
        config: a RecBole ``Config`` (or a dict of the resolved settings).

    Raises:
        ConfigError: one line naming the key, its value and a valid example.
    """
    settings = (
        config.final_config_dict if hasattr(config, "final_config_dict") else config
    )

    def given(key):
        return key in settings and settings[key] is not None

    for key in _POSITIVE_INTS:
        if given(key) and (not _is_int(settings[key]) or settings[key] < 1):
            _refuse(key, settings[key], "an integer >= 1", _EXAMPLES.get(key, 1))
    for key in _NON_NEGATIVE_INTS:
        if given(key) and (not _is_int(settings[key]) or settings[key] < 0):
            _refuse(key, settings[key], "an integer >= 0", 0)
    for key in _NON_NEGATIVE_NUMBERS:
        if given(key) and (not _is_number(settings[key]) or settings[key] < 0):
            _refuse(key, settings[key], "a number >= 0", 0)
    for key in _BOOLS:
        if given(key) and not isinstance(settings[key], bool):
            _refuse(key, settings[key], "True or False", True)
    if given("learning_rate"):
        rate = settings["learning_rate"]
        if not _is_number(rate) or not rate > 0:
            _refuse("learning_rate", rate, "a number > 0", 0.001)
    if given("seed") and not _is_int(settings["seed"]):
        _refuse("seed", settings["seed"], "an integer", 2020)
    for key in sorted(k for k in settings if _is_dropout_key(k)):
        value = settings[key]
        if value is not None and (not _is_number(value) or not 0 <= value < 1):
            _refuse(key, value, "a probability in [0, 1)", 0.1)
    if given("topk"):
        topk = settings["topk"]
        cutoffs = topk if isinstance(topk, (list, tuple)) else [topk]
        if not cutoffs or not all(_is_int(k) and k >= 1 for k in cutoffs):
            _refuse("topk", topk, "an integer >= 1 or a list of them", "[10,20]")
