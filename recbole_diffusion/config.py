"""Configuration with the plugin's property files and a documented precedence.

Lowest to highest precedence:

1. RecBole's own defaults (``recbole/properties``);
2. ``props/overall.yaml``: plugin-wide settings (CE loss, metrics, full ranking);
3. ``props/<Model>.yaml``, then ``props/<Model>-<Variant>.yaml`` when the model
   is named with a variant (``DiffuRecSys-V1``);
4. ``props/datasets/<dataset>.yaml`` when the dataset has one, then
   ``props/<Model>/<dataset>.yaml`` (a model's settings for that dataset);
5. the user's config files, in the order given;
6. ``config_dict`` (Python API), then ``--key=value`` from the command line.

Everything that can be checked without loading data is checked here, so a bad
run stops before any work with a message that says what to change.
"""

import ast
import importlib.resources
import logging
import os
import re
from pathlib import Path

from recbole.config import Config as RecBoleConfig
from recbole.evaluator.register import metric_types

from recbole_diffusion.data_check import check_atomic_files
from recbole_diffusion.precheck import load_yaml_file as _load_yaml_file
from recbole_diffusion.registry import MODEL_ALIASES, get_model
from recbole_diffusion.settings_check import check_recbole_settings
from recbole_diffusion.utils import ConfigError, _closest, check_lr_schedule

__all__ = [
    "Config",
    "DatasetNotFoundError",
    "build_config",
    "known_datasets",
    "props_dir",
    "resolve_model",
]

DEFAULT_DATASET = "ml-100k"
DATA_PATH_ENV = "RECBOLE_DIFFUSION_DATA"


class DatasetNotFoundError(ConfigError):
    """The dataset's atomic files are not where the configuration points."""


def props_dir():
    """The folder of the plugin's property files, in a source tree or a wheel."""
    try:
        packaged = importlib.resources.files("recbole_diffusion.props")
        if packaged.joinpath("overall.yaml").is_file():
            return Path(str(packaged))
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / "props"


def _project_root():
    return Path(__file__).resolve().parent.parent


def known_datasets():
    """Datasets that work by name: RecBole's bundled ml-100k and ours."""
    names = {DEFAULT_DATASET}
    dataset_props = props_dir() / "datasets"
    if dataset_props.is_dir():
        names.update(p.stem for p in dataset_props.glob("*.yaml"))
    return sorted(names)


def resolve_model(model_name):
    """Split ``Model-Variant`` into the model class and its property files."""
    root = props_dir()
    files = [root / "overall.yaml"]
    model_name = MODEL_ALIASES.get(model_name, model_name)
    if "-" in model_name and (root / f"{model_name}.yaml").is_file():
        base_name = model_name.split("-", 1)[0]
        model_class = get_model(base_name)
        base_file = root / f"{base_name}.yaml"
        if base_file.is_file():
            files.append(base_file)
        files.append(root / f"{model_name}.yaml")
    else:
        model_class = get_model(model_name)
        model_file = root / f"{model_name}.yaml"
        if model_file.is_file():
            files.append(model_file)
    return model_class, files


class Config(RecBoleConfig):
    """RecBole's ``Config`` with explicit command-line overrides.

    RecBole reads ``sys.argv`` itself, which mixes the run script's own flags
    (and pytest's) into the configuration; here the caller passes the parsed
    ``--key=value`` pairs as ``cmd_args`` instead. The device set-up also
    accepts a ``backend`` (``gloo`` on CPUs) where RecBole hard-codes ``nccl``.
    """

    def __init__(
        self,
        model=None,
        dataset=None,
        config_file_list=None,
        config_dict=None,
        cmd_args=None,
    ):
        self._cmd_args = dict(cmd_args or {})
        super().__init__(model, dataset, config_file_list, config_dict)

    def _load_cmd_line(self):
        return self._convert_config_dict(dict(self._cmd_args))

    def _convert_config_dict(self, config_dict):
        """Read string values as Python literals (numbers, lists, dicts,
        booleans, None), or keep them as strings.

        RecBole's version calls ``eval`` on every ``--key=value``, so a value
        could run code; ``ast.literal_eval`` reads the same literals and
        nothing else.
        """
        for key, value in config_dict.items():
            if isinstance(value, str):
                config_dict[key] = _literal(value)
        return config_dict

    def _init_device(self):
        if "local_rank" not in self.final_config_dict:
            return super()._init_device()
        import torch
        import torch.distributed as dist

        gpu_id = self.final_config_dict["gpu_id"]
        if isinstance(gpu_id, tuple):
            gpu_id = ",".join(map(str, gpu_id))
        self.final_config_dict["gpu_id"] = str(gpu_id)
        use_cuda = torch.cuda.is_available() and bool(
            self.final_config_dict.get("use_gpu", True)
        )
        backend = self.final_config_dict.get("backend") or (
            "nccl" if use_cuda else "gloo"
        )
        local_rank = self.final_config_dict["local_rank"]
        # RecBole has no defaults for these: one machine, nproc processes.
        settings = self.final_config_dict
        settings.setdefault("nproc", 1)
        if not settings.get("world_size") or settings["world_size"] <= 0:
            settings["world_size"] = settings["nproc"]
        settings["offset"] = settings.get("offset") or 0
        settings["ip"] = settings.get("ip") or "localhost"
        settings["port"] = settings.get("port") or 5678
        settings["backend"] = backend
        if not dist.is_initialized():
            dist.init_process_group(
                backend=backend,
                rank=local_rank + settings["offset"],
                world_size=settings["world_size"],
                init_method=f"tcp://{settings['ip']}:{settings['port']}",
            )
        if use_cuda:
            self.final_config_dict["device"] = torch.device("cuda", local_rank)
            torch.cuda.set_device(local_rank)
        else:
            self.final_config_dict["device"] = torch.device("cpu")
        self.final_config_dict["single_spec"] = False
        if local_rank != 0:
            self.final_config_dict["state"] = "error"
            self.final_config_dict["show_progress"] = False
            self.final_config_dict["verbose"] = False


def _literal(text):
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        lowered = text.strip().lower()
        return {"true": True, "false": False}.get(lowered, text)
    if isinstance(value, set):  # not a RecBole type; keep what was typed
        return text
    return value


def _resolve_data_path(data_path):
    """Resolve a relative ``data_path`` against the cwd, then the project root."""
    candidates = []
    if os.environ.get(DATA_PATH_ENV):
        candidates.append(Path(os.environ[DATA_PATH_ENV]))
    path = Path(data_path)
    if path.is_absolute():
        candidates.append(path)
    else:
        candidates += [Path.cwd() / path, _project_root() / path]
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate.resolve()), candidates
    return str(candidates[0]), candidates


def _check_dataset_files(config, looked_in):
    dataset = config["dataset"]
    data_dir = Path(config["data_path"])
    if config["benchmark_filename"]:
        wanted = [
            data_dir / f"{dataset}.{part}.inter"
            for part in config["benchmark_filename"]
        ]
    else:
        wanted = [data_dir / f"{dataset}.inter"]
    missing = [str(p) for p in wanted if not p.is_file()]
    if not missing:
        return
    places = ", ".join(dict.fromkeys(str(p) for p in looked_in)) or str(data_dir)
    hint = _closest(dataset, known_datasets())
    raise DatasetNotFoundError(
        f"Dataset '{dataset}' not found: no file {', '.join(missing)} "
        f"(looked in {places}).{hint} Known datasets: {', '.join(known_datasets())}. "
        f"To use your own data, put RecBole atomic files <name>/<name>.inter under a "
        f"folder and pass --data_path=<folder> --dataset=<name> (or set "
        f"{DATA_PATH_ENV}); RecBole's downloads are not used."
    )


def _check_metrics(config):
    topk = config["topk"]
    valid_names = set()
    for metric in config["metrics"]:
        if metric.lower() not in metric_types:
            raise ConfigError(
                f"Unknown metric '{metric}'.{_closest(metric, list(metric_types))} "
                f"Available metrics: {', '.join(sorted(metric_types))}."
            )
    from recbole.evaluator.register import metrics_dict

    for metric in config["metrics"]:
        metric_class = metrics_dict[metric.lower()]
        # top-k metrics are reported per cut-off (ndcg@10); the others once (mrr).
        if "rec.topk" in getattr(metric_class, "metric_need", []):
            valid_names.update(f"{metric.lower()}@{k}" for k in topk)
        else:
            valid_names.add(metric.lower())
    if config["valid_metric"].lower() not in valid_names:
        raise ConfigError(
            f"valid_metric '{config['valid_metric']}' is not computed by the metrics "
            f"{config['metrics']} at topk {topk}. Choose one of: "
            f"{', '.join(sorted(valid_names))}."
        )


_TYPE_WORDS = {
    bool: "True or False",
    int: "an integer",
    float: "a number",
    list: "a list",
    tuple: "a list",
    dict: "a dict",
}


def _check_cmd_types(config, cmd_args):
    """Refuse a ``--key=value`` whose value cannot have the key's type."""
    defaults = dict(config.internal_config_dict)
    defaults.update(config.file_config_dict)
    parsed = config.cmd_config_dict
    logger = logging.getLogger(__name__)
    for key in cmd_args:
        value = parsed.get(key)
        if key not in defaults:
            if key not in ("model", "dataset", "config_files"):
                logger.warning(
                    "--%s is not a known parameter of %s; it is passed to the model "
                    "as given.%s",
                    key,
                    config["model"],
                    _closest(key, list(defaults)),
                )
            continue
        default = defaults[key]
        if default is None or value is None:
            continue
        expected = type(default)
        ok = True
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, (list, dict)):
            ok = isinstance(value, (list, tuple, dict))
        if not ok:
            raise ConfigError(
                f"--{key}={cmd_args[key]} cannot be read as "
                f"{_TYPE_WORDS.get(expected, expected.__name__)} "
                f"(the default is {default!r}). Give e.g. --{key}={default!r}.".replace(
                    "'", ""
                )
            )


def _cap_stage_epochs(config, model_class, given):
    """A user's ``epochs`` bounds the whole run: it also caps the budgets of a
    staged model's earlier stages (ADRec's ``pretrain_epochs`` and
    ``warmup_epochs``), unless the user set those as well."""
    if "epochs" not in given:
        return
    for key in getattr(model_class, "stage_epoch_keys", ()):
        if key not in given and isinstance(config[key], int):
            config[key] = min(config[key], config["epochs"])


def build_config(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    cmd_args=None,
):
    """Build the run's :class:`Config` with the plugin's precedence.

    Args:
        model (str): model name (``SASRec``, ``ADRec``, ``DiffuRecSys-V1`` ...);
            defaults to the flagship model.
        dataset (str): dataset name; defaults to ``ml-100k``.
        config_file_list (list[str]): the user's yaml files, lowest first.
        config_dict (dict): overrides from Python.
        cmd_args (dict[str, str]): ``--key=value`` overrides, highest.

    Raises:
        ConfigError: an unknown model, metric or dataset, a missing or
            malformed file, a value of the wrong type, or a hyperparameter the
            model refuses.
    """
    config_dict = dict(config_dict or {})
    cmd_args = dict(cmd_args or {})
    model = model or cmd_args.get("model") or config_dict.get("model")
    dataset = dataset or cmd_args.get("dataset") or config_dict.get("dataset")
    user_files = list(config_file_list or [])
    user_settings = {}
    for path in user_files:
        user_settings.update(_load_yaml_file(path, "Config file"))
    model = model or user_settings.get("model") or default_model()
    dataset = dataset or user_settings.get("dataset") or DEFAULT_DATASET

    model_class, model_files = resolve_model(model)
    files = list(model_files)
    dataset_file = props_dir() / "datasets" / f"{dataset}.yaml"
    if dataset_file.is_file():
        files.append(dataset_file)
    # A model's settings for one dataset (e.g. the paper's T per dataset).
    model_dataset_file = props_dir() / model_class.__name__ / f"{dataset}.yaml"
    if model_dataset_file.is_file():
        files.append(model_dataset_file)
    for path in files:
        _load_yaml_file(path, "Property file")
    files += [str(Path(p)) for p in user_files]

    # data_path: the last layer that sets it wins; relative paths are resolved
    # here so that runs from any folder (and installed wheels) find the data.
    data_path = None
    for path in files:
        data_path = _load_yaml_file(path, "Property file").get("data_path", data_path)
    data_path = cmd_args.get("data_path", config_dict.get("data_path", data_path))
    looked_in = []
    if data_path is not None and dataset != DEFAULT_DATASET:
        resolved, looked_in = _resolve_data_path(data_path)
        if "data_path" in cmd_args:
            cmd_args["data_path"] = resolved
        else:
            config_dict["data_path"] = resolved

    try:
        config = Config(
            model=model_class,
            dataset=dataset,
            config_file_list=[str(f) for f in files],
            config_dict=config_dict,
            cmd_args=cmd_args,
        )
    except NotImplementedError as error:  # RecBole's unknown-metric error
        match = re.search(r"named '(.*)'", str(error))
        metric = match.group(1) if match else str(error)
        raise ConfigError(
            f"Unknown metric '{metric}'.{_closest(metric, list(metric_types))} "
            f"Available metrics: {', '.join(sorted(metric_types))}."
        ) from error
    except (ValueError, TypeError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"Invalid configuration: {error}") from error
    # The model name as typed (with its variant) is kept for logs and files.
    config["model_variant"] = model
    _check_cmd_types(config, cmd_args)
    check_recbole_settings(config)
    _cap_stage_epochs(config, model_class, {**user_settings, **config_dict, **cmd_args})
    _check_metrics(config)
    check_lr_schedule(config)
    if dataset != DEFAULT_DATASET or data_path is not None:
        if not looked_in:
            looked_in = [Path(config["data_path"]).parent]
        _check_dataset_files(config, looked_in)
    check_atomic_files(config)
    validate = getattr(model_class, "validate_config", None)
    if validate is not None:
        validate(config)
    return config


def default_model():
    """The plugin's flagship model, or SASRec until it is available."""
    try:
        get_model("ADRec")
        return "ADRec"
    except ConfigError:
        return "SASRec"
