"""Train, validate and test a model in one call, as RecBole's quick start does.

This module does not import ``recbole.quick_start`` (which imports ray) and
never unpickles files: datasets are built from the atomic files and
checkpoints are read with ``weights_only=True``.
"""

import datetime
import importlib
import logging
import time
from logging import getLogger

from recbole.data.utils import create_samplers, get_dataloader
from recbole.utils import init_logger, init_seed, set_color

from recbole_diffusion.config import build_config
from recbole_diffusion.data_check import check_interactions_left, nothing_left_error
from recbole_diffusion.registry import get_model, get_trainer
from recbole_diffusion.results import write_run_result
from recbole_diffusion.trainer import load_checkpoint

__all__ = [
    "build_pipeline",
    "create_dataset",
    "data_preparation",
    "load_data_and_model",
    "objective_function",
    "run_recbole_diffusion",
]

# Set per process by a multi-process run (see recbole_diffusion.distributed).
_DISTRIBUTED_KEYS = ("local_rank", "world_size", "nproc", "ip", "port", "offset")

_TYPE_TO_DATASET = {
    "GENERAL": "Dataset",
    "SEQUENTIAL": "SequentialDataset",
    "CONTEXT": "Dataset",
    "KNOWLEDGE": "KnowledgeBasedDataset",
    "TRADITIONAL": "Dataset",
    "DECISIONTREE": "Dataset",
}


# The handlers the last run's init_logger installed (its console and log file).
_run_log_handlers = []


def init_run_logger(config):
    """RecBole's ``init_logger`` for this run, with a log file of its own.

    ``init_logger`` installs its handlers with ``logging.basicConfig``, which
    does nothing when the root logger already has a handler: a second run in
    one process (a tuning trial, a test under pytest) would log into the first
    run's file, or nowhere. The previous run's handlers are closed and other
    handlers are set aside while RecBole installs its own.

    Returns:
        str: the path of the run's log file.
    """
    root = logging.getLogger()
    for handler in _run_log_handlers:
        root.removeHandler(handler)
        handler.close()
    others = list(root.handlers)
    for handler in others:
        root.removeHandler(handler)
    try:
        init_logger(config)
        _run_log_handlers[:] = root.handlers
    finally:
        for handler in others:
            root.addHandler(handler)
    files = [h for h in _run_log_handlers if isinstance(h, logging.FileHandler)]
    return files[0].baseFilename if files else None


def create_dataset(config):
    """Build the dataset for ``config['model']`` from its atomic files.

    Uses ``recbole_diffusion.data.<Model>Dataset`` if the plugin defines one,
    then ``recbole.data.dataset.<Model>Dataset``, then the model type's
    default. Unlike RecBole's ``create_dataset`` it never loads a pickled
    dataset from the checkpoint folder.
    """
    plugin_data = importlib.import_module("recbole_diffusion.data")
    recbole_data = importlib.import_module("recbole.data.dataset")
    class_name = config["model"] + "Dataset"
    if hasattr(plugin_data, class_name):
        dataset_class = getattr(plugin_data, class_name)
    elif hasattr(recbole_data, class_name):
        dataset_class = getattr(recbole_data, class_name)
    else:
        dataset_class = getattr(
            recbole_data, _TYPE_TO_DATASET[config["MODEL_TYPE"].name]
        )
    try:
        return dataset_class(config)
    except ValueError as error:
        # RecBole's own words when its filters removed every interaction.
        if "feat is empty" in str(error):
            raise nothing_left_error(config) from error
        raise


def data_preparation(config, dataset):
    """Split ``dataset`` and build the train, valid and test data loaders."""
    built_datasets = dataset.build()
    train_sampler, valid_sampler, test_sampler = create_samplers(
        config, dataset, built_datasets
    )
    train_dataset, valid_dataset, test_dataset = built_datasets
    train_data = get_dataloader(config, "train")(
        config, train_dataset, train_sampler, shuffle=config["shuffle"]
    )
    valid_data = get_dataloader(config, "valid")(
        config, valid_dataset, valid_sampler, shuffle=False
    )
    test_data = get_dataloader(config, "test")(
        config, test_dataset, test_sampler, shuffle=False
    )
    logger = getLogger()
    logger.info(
        set_color("[Training]: ", "pink")
        + set_color("train_batch_size", "cyan")
        + " = "
        + set_color(f"[{config['train_batch_size']}]", "yellow")
    )
    logger.info(
        set_color("[Evaluation]: ", "pink")
        + set_color("eval_batch_size", "cyan")
        + " = "
        + set_color(f"[{config['eval_batch_size']}]", "yellow")
        + set_color(" eval_args", "cyan")
        + ": "
        + set_color(f"[{config['eval_args']}]", "yellow")
    )
    return train_data, valid_data, test_data


def _build_from_config(config, dataset=None):
    if dataset is None:
        init_seed(config["seed"], config["reproducibility"])
        dataset = create_dataset(config)
        check_interactions_left(config, dataset)
    logger = getLogger()
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    # Same seed before the model is built, as RecBole does, so that weights
    # do not depend on how much randomness data loading consumed.
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    return dataset, train_data, valid_data, test_data, model


def build_pipeline(
    model=None, dataset=None, config_file_list=None, config_dict=None, cmd_args=None
):
    """Build config, dataset, data loaders and model, without training.

    Returns:
        tuple: ``(config, dataset, train_data, valid_data, test_data, model)``.
    """
    config = build_config(model, dataset, config_file_list, config_dict, cmd_args)
    dataset, train_data, valid_data, test_data, model = _build_from_config(config)
    return config, dataset, train_data, valid_data, test_data, model


def run_recbole_diffusion(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    saved=True,
    cmd_args=None,
    resume_file=None,
):
    """Train a model, pick the best epoch on validation, and test it.

    Args:
        model (str): model name, a plugin model or any RecBole model.
        dataset (str): dataset name; ``ml-100k`` by default.
        config_file_list (list[str]): the user's yaml files.
        config_dict (dict): parameter overrides.
        saved (bool): save the best checkpoint and test with it.
        cmd_args (dict): ``--key=value`` overrides (highest precedence).
        resume_file (str): a checkpoint of this plugin to resume training from.

    Returns:
        dict: ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
        ``test_result``, ``model_file``, ``config`` and ``result_file`` (the
        run's JSON result next to its log file; see ``recbole_diffusion.results``).
    """
    started_at = datetime.datetime.now().astimezone()
    started = time.perf_counter()
    config = build_config(model, dataset, config_file_list, config_dict, cmd_args)
    if resume_file:
        # A missing or unsafe checkpoint is refused before the run's log exists.
        load_checkpoint(resume_file)
    # The dataset is built before the run's log starts: a dataset that the
    # filters leave empty is refused without a log of a run that never began.
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    check_interactions_left(config, dataset)
    log_file = init_run_logger(config)
    logger = getLogger()
    logger.info(config)
    dataset, train_data, valid_data, test_data, model = _build_from_config(
        config, dataset
    )

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    if resume_file:
        trainer.resume_checkpoint(resume_file)
    logger.info(set_color("training budget", "blue") + f": {_budget(trainer)}")
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "model_file": trainer.saved_model_file if saved else None,
        "config": config,
        # Internal ids of the users the test evaluated (all processes under DDP).
        "test_users": _evaluated_users(trainer),
    }
    result["wall_seconds"] = time.perf_counter() - started
    result["result_file"] = write_run_result(
        config,
        trainer,
        result,
        log_file,
        started_at,
        result["wall_seconds"],
        str(resume_file) if resume_file else None,
    )
    if result["result_file"]:
        logger.info(set_color("result file", "yellow") + f": {result['result_file']}")
    return result


def _budget(trainer):
    """The run's epoch budget, in words (ADRec: one per stage)."""
    patience = f"early stopping after {trainer.stopping_step} evaluations without gain"
    stages = getattr(trainer, "stage_epochs", None)
    if stages:
        counts = " + ".join(str(stages[stage]) for stage in sorted(stages))
        return f"at most {counts} epochs (stages 1, 2, 3), {patience}"
    return f"at most {trainer.epochs} epochs, {patience}"


def _evaluated_users(trainer):
    users = getattr(trainer.eval_collector, "evaluated_users", None)
    return None if users is None else users.tolist()


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """The objective that RecBole's ``HyperTuning`` calls for each trial.

    The model and dataset are read from ``config_dict`` or the config files
    (``model: ADRec``, ``dataset: ml-100k``), as with RecBole's own objective.
    """
    result = run_recbole_diffusion(
        config_file_list=config_file_list, config_dict=config_dict, saved=saved
    )
    # HyperTuning logs every trial; keep RecBole's per-epoch logging quiet.
    logging.getLogger().setLevel(logging.INFO)
    return {
        "model": result["config"]["model_variant"],
        "best_valid_score": result["best_valid_score"],
        "valid_score_bigger": result["valid_score_bigger"],
        "best_valid_result": result["best_valid_result"],
        "test_result": result["test_result"],
        "model_file": result["model_file"],
        "result_file": result["result_file"],
    }


def load_data_and_model(model_file, config_dict=None, log_to_file=True):
    """Load a checkpoint written by this plugin, with its data.

    The file is read with ``weights_only=True``; its configuration is rebuilt
    from the plain values it stores. ``log_to_file=False`` sets up no log file
    (RecBole's ``init_logger`` creates one per call).

    Returns:
        tuple: ``(config, model, dataset, train_data, valid_data, test_data)``,
        like ``recbole.quick_start.load_data_and_model``.
    """
    checkpoint = load_checkpoint(model_file)
    stored = checkpoint["config"]
    # A checkpoint written by a multi-process run stores its rank and address;
    # loading it is a one-process job.
    overrides = {
        key: value
        for key, value in stored["external"].items()
        if key not in _DISTRIBUTED_KEYS
    }
    overrides.update(config_dict or {})
    config = build_config(
        model=stored["model_variant"], dataset=stored["dataset"], config_dict=overrides
    )
    if log_to_file:
        init_run_logger(config)
    dataset, train_data, valid_data, test_data, model = _build_from_config(config)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    model.eval()
    return config, model, dataset, train_data, valid_data, test_data
