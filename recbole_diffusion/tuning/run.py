"""Running a search: RecBole's ``HyperTuning`` (hyperopt) or Ray Tune.

``run_tuning`` checks everything first (options, the fixed settings, the search
space), runs the trials with the chosen back end and writes the reports. The
Ray back end (``tuning.ray_backend``) is imported only for ``--tool=ray``.
"""

import datetime
import os

from recbole_diffusion.config import build_config
from recbole_diffusion.tuning.objective import TuningObjective
from recbole_diffusion.tuning.report import (
    write_csv,
    write_display,
    write_json,
    write_markdown,
    write_results,
)
from recbole_diffusion.tuning.space import (
    check_parameters,
    default_params_file,
    grid_size,
    hyperopt_space,
    read_params_file,
)
from recbole_diffusion.utils import ConfigError, _closest

__all__ = ["ALGORITHMS", "DEFAULT_MAX_EVALS", "TOOLS", "run_tuning"]

ALGORITHMS = ("exhaustive", "random", "bayes")
TOOLS = ("hyperopt", "ray")
DEFAULT_MAX_EVALS = 10
# Inside log/, which RecBole users (and .gitignore) already treat as output.
DEFAULT_OUTPUT_DIR = os.path.join("log", "tuning")
DISPLAY_FORMATS = (".html", ".htm", ".png", ".svg", ".pdf")


def _fixed_settings(model, dataset, config, config_dict):
    fixed = {"model": model, "dataset": dataset}
    fixed.update(config_dict or {})
    fixed.update(config.cmd_config_dict)
    fixed["model"], fixed["dataset"] = model, dataset
    return fixed


def _best_trial(trials, bigger):
    finished = [t for t in trials if not t.get("error")]
    if not finished:
        return None
    key = (
        (lambda t: t["best_valid_score"])
        if bigger
        else (lambda t: -t["best_valid_score"])
    )
    return max(finished, key=key)


def run_tuning(
    model=None,
    dataset=None,
    params_file=None,
    config_file_list=None,
    config_dict=None,
    cmd_args=None,
    algo="exhaustive",
    max_evals=None,
    early_stop=None,
    output_file=None,
    tool="hyperopt",
    ray_cpus=None,
    saved=True,
    display_file=None,
):
    """Search hyperparameters and write the results.

    Args:
        model, dataset, config_file_list, config_dict, cmd_args: fixed
            settings, as for :func:`run_recbole_diffusion`.
        params_file (str): the search space; by default
            ``props/hyper/<Model>.hyper``.
        algo (str): ``exhaustive`` (every combination of the grid),
            ``random`` or ``bayes`` (TPE).
        max_evals (int): trials for random and bayes (default 10); caps an
            exhaustive search.
        early_stop (int): stop after this many trials without improvement
            (hyperopt tool); by default never for exhaustive search, 10 otherwise.
        output_file (str): every trial's results in RecBole's layout; beside it
            ``<output_file>.json`` and ``<output_file>.csv`` (each trial's
            parameters, metrics and checkpoint) and the summary
            ``<output_file>.md``. Default
            ``log/tuning/hyper_<Model>_<dataset>.result`` (``log/`` is
            git-ignored).
        tool (str): ``hyperopt`` (RecBole's ``HyperTuning``) or ``ray``.
        ray_cpus (int): CPUs of the local Ray instance (default: up to 2).
        display_file (str): RecBole's ``display_file``: a figure of every
            trial's valid score (``.html``, ``.png``, ``.svg`` or ``.pdf``).

    Returns:
        dict: ``best_params``, ``best_valid_score``, ``best_valid_result``,
        ``best_test_result``, ``trials`` (one dict per trial), ``output_file``,
        ``json_file``, ``csv_file``, ``summary_file`` and ``display_file``.

    Raises:
        ConfigError: a bad params file, option or fixed setting, before any
            trial runs.
    """
    if algo not in ALGORITHMS:
        raise ConfigError(
            f"--algo={algo} is invalid.{_closest(algo, list(ALGORITHMS))} "
            f"Choose {', '.join(ALGORITHMS)}."
        )
    if tool not in TOOLS:
        raise ConfigError(
            f"--tool={tool} is invalid.{_closest(tool, list(TOOLS))} "
            f"Choose {', '.join(TOOLS)}."
        )
    if display_file is not None and (
        os.path.splitext(str(display_file))[1].lower() not in DISPLAY_FORMATS
    ):
        raise ConfigError(
            f"--display_file={display_file} is invalid: end it with one of "
            f"{', '.join(DISPLAY_FORMATS)} (e.g. --display_file=tuning.html)."
        )
    for name, value in (("max_evals", max_evals), ("early_stop", early_stop)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"--{name}={value} is invalid: give a positive integer.")
    build_args = {
        "model": model,
        "dataset": dataset,
        "config_file_list": config_file_list,
        "config_dict": config_dict,
        "cmd_args": cmd_args,
    }
    config = build_config(**build_args)
    model = config["model_variant"] or config["model"]
    dataset = config["dataset"]
    if params_file is None:
        params_file = default_params_file(model)
        if params_file is None:
            raise ConfigError(
                f"No search space for {model}: props/hyper/{model}.hyper does not "
                "exist. Give one with --params_file=FILE."
            )
    params = read_params_file(params_file)
    check_parameters(params, config, build_args)
    space = hyperopt_space(params, algo)
    if algo == "exhaustive":
        total = grid_size(params)
        trials_wanted = min(total, max_evals) if max_evals else total
    else:
        trials_wanted = max_evals or DEFAULT_MAX_EVALS
    output_file = output_file or os.path.join(
        DEFAULT_OUTPUT_DIR, f"hyper_{model}_{dataset}.result"
    )
    out_dir = os.path.dirname(os.path.abspath(output_file))
    os.makedirs(out_dir, exist_ok=True)

    fixed = _fixed_settings(model, dataset, config, config_dict)
    bigger = config["valid_metric_bigger"]
    # Defaults give sampled values their type; plain values travel to Ray workers.
    plain = (bool, int, float, str, list, tuple, dict, type(None))
    defaults = {
        key: value
        for key, value in config.final_config_dict.items()
        if isinstance(value, plain)
    }
    started = datetime.datetime.now()
    if tool == "ray":
        from recbole_diffusion.tuning.ray_backend import run_ray_search

        trials = run_ray_search(
            params,
            space,
            fixed,
            config_file_list,
            defaults,
            algo=algo,
            trials_wanted=trials_wanted,
            bigger=bigger,
            storage_dir=os.path.join(out_dir, "ray_results"),
            num_cpus=ray_cpus,
            name=f"{model}-{dataset}",
            saved=saved,
        )
    else:
        trials = _run_hyperopt(
            space,
            fixed,
            config_file_list,
            defaults,
            algo=algo,
            trials_wanted=trials_wanted,
            early_stop=early_stop,
            bigger=bigger,
            saved=saved,
        )
    best = _best_trial(trials, bigger)
    summary = {
        "model": model,
        "dataset": dataset,
        "algo": algo,
        "tool": tool,
        "params_file": str(params_file),
        "params": params,
        "fixed": fixed,
        "config_file_list": list(config_file_list or []),
        "valid_metric": config["valid_metric"].lower(),
        "bigger": bigger,
        "trials": trials,
        "best": best,
        "grid_size": grid_size(params) if algo == "exhaustive" else None,
        "started": started,
        "finished": datetime.datetime.now(),
    }
    summary_file = output_file + ".md"
    write_results(output_file, summary)
    write_json(output_file + ".json", summary)
    write_csv(output_file + ".csv", summary)
    write_markdown(summary_file, summary)
    if display_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(display_file)), exist_ok=True)
        write_display(display_file, summary)
    return {
        "best_params": best["params"] if best else None,
        "best_valid_score": best["best_valid_score"] if best else None,
        "best_valid_result": best["best_valid_result"] if best else None,
        "best_test_result": best["test_result"] if best else None,
        "trials": trials,
        "output_file": output_file,
        "json_file": output_file + ".json",
        "csv_file": output_file + ".csv",
        "summary_file": summary_file,
        "display_file": display_file,
    }


def _run_hyperopt(
    space,
    fixed,
    config_file_list,
    defaults,
    algo,
    trials_wanted,
    early_stop,
    bigger,
    saved,
):
    from recbole.trainer import HyperTuning

    objective = TuningObjective(fixed, defaults, bigger, saved=saved)
    tuner = HyperTuning(
        objective,
        space=space,
        fixed_config_file_list=config_file_list,
        algo=algo,
        max_evals=trials_wanted,
        # An exhaustive search runs the whole grid unless told otherwise.
        early_stop=early_stop or (trials_wanted if algo == "exhaustive" else 10),
    )
    tuner.max_evals = min(tuner.max_evals, trials_wanted)
    tuner.run()
    return objective.trials
