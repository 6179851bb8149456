"""Checks of the command line that need neither torch nor RecBole.

Importing torch and RecBole takes 10 to 25 s on a small machine; a misspelt
model name or parameter should be refused before that, in about a second.
This module reads only the property files (the plugin's and RecBole's own
``recbole/properties``, found without importing RecBole) and the user's
yaml files. The full checks of values and data still run when the
configuration is built (``recbole_diffusion.config``).
"""

import functools
import importlib.util
import re
from pathlib import Path

import yaml

from recbole_diffusion.utils import ConfigError, _closest

__all__ = [
    "check_command_line",
    "known_model_names",
    "known_parameter_names",
    "load_yaml_file",
]

# Keys that RecBole or the plugin set on the configuration at run time, which
# no property file defines but a user may still set (or see in a result file).
RUNTIME_KEYS = frozenset(
    {
        "model",
        "dataset",
        "config_files",
        "MODEL_TYPE",
        "MODEL_INPUT_TYPE",
        "eval_type",
        "valid_metric_bigger",
        "valid_neg_sample_args",
        "test_neg_sample_args",
        "device",
        "single_spec",
        "local_rank",
        "model_variant",
        "world_size",
        "nproc",
        "ip",
        "port",
        "offset",
        "backend",
    }
)

# Model names that are not Python identifiers (see registry.MODEL_ALIASES).
_ALIASES = {"SASRec+": "SASRecPlus"}


def _plugin_props_dir():
    # The same folder as config.props_dir(), which imports RecBole.
    packaged = Path(__file__).resolve().parent / "props"
    if (packaged / "overall.yaml").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "props"


def _recbole_properties_dir():
    spec = importlib.util.find_spec("recbole")  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "properties"


def load_yaml_file(path, what):
    """Read a yaml file of ``key: value`` lines, or raise a one-line ConfigError.

    Args:
        path: the file.
        what (str): how the message names it ("Config file", "Property file").
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{what} '{path}' does not exist. Check the path "
            f"(relative paths are read from {Path.cwd()})."
        )
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise ConfigError(
            f"{what} '{path}' is not valid YAML: {reason}. "
            "Fix the file (one 'key: value' per line)."
        ) from error
    if content is not None and not isinstance(content, dict):
        raise ConfigError(
            f"{what} '{path}' must hold 'key: value' lines, "
            f"found a {type(content).__name__}."
        )
    return content or {}


@functools.lru_cache(maxsize=1)
def known_model_names():
    """Every name ``--model`` accepts: the plugin's models and their variants
    (``props/<Name>.yaml``) and RecBole's models (``properties/model/``)."""
    names = {p.stem for p in _plugin_props_dir().glob("*.yaml")} - {"overall"}
    names |= {alias for alias, name in _ALIASES.items() if name in names}
    recbole_props = _recbole_properties_dir()
    if recbole_props is not None:
        names |= {p.stem for p in (recbole_props / "model").glob("*.yaml")}
        # Models without a property file (Pop, Random): RecBole names each
        # model's module after its class, as registry.get_model looks them up.
        for module in (recbole_props.parent / "model").glob("*_recommender/*.py"):
            text = module.read_text(encoding="utf-8", errors="replace")
            names |= {
                match
                for match in re.findall(r"^class (\w+)\(", text, flags=re.MULTILINE)
                if match.lower() == module.stem.lower()
            }
    return frozenset(names)


def _keys_of(files):
    keys = set()
    for path in files:
        try:
            with open(path, encoding="utf-8") as handle:
                content = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(content, dict):
            keys.update(map(str, content))
    return keys


@functools.lru_cache(maxsize=1)
def _property_keys():
    files = list(_plugin_props_dir().rglob("*.yaml"))
    recbole_props = _recbole_properties_dir()
    if recbole_props is not None:
        files += recbole_props.rglob("*.yaml")
    return frozenset(_keys_of(files) | RUNTIME_KEYS)


def known_parameter_names(user_files=()):
    """Every key some configuration layer defines: RecBole's defaults, any
    model's or dataset's property file, run-time keys, and the user's files."""
    return _property_keys() | _keys_of(user_files)


def _check_model(name):
    if name is None or name in known_model_names():
        return
    candidates = sorted(known_model_names(), key=str.lower)
    raise ConfigError(
        f"Unknown model '{name}'.{_closest(name, candidates)} "
        f"Available models: {', '.join(candidates)}."
    )


def check_command_line(flags, params):
    """Refuse an unknown model or parameter name before torch is imported.

    Args:
        flags (dict): the command's own flags (``model``, ``config_files`` ...).
        params (dict[str, str]): the ``--key=value`` parameters.

    Raises:
        ConfigError: one line naming the mistake and, where one is close, the
            intended name.
    """
    user_files = list(flags.get("config_files") or [])
    user_settings = {}
    for path in user_files:
        user_settings.update(load_yaml_file(path, "Config file"))
    _check_model(flags.get("model") or user_settings.get("model"))
    known = known_parameter_names(user_files)
    for key in params:
        if key not in known:
            raise ConfigError(
                f"--{key} is not a parameter of any model, dataset or RecBole "
                f"setting.{_closest(key, sorted(known))} (A key of your own is "
                f"known once a --config_files yaml file defines it.)"
            )
