"""The Ray Tune back end of ``--tune --tool=ray`` (imports ray; load it only then).

As RecBole's ``run_hyper.py --tool=Ray``: each trial is one call of the
plugin's objective in a Ray worker, which reports the valid score and the
valid and test results. Ray runs on a local instance started here with
``ray.init(num_cpus=...)``; each trial asks for one CPU, so ``num_cpus``
trials run at once. Exhaustive search runs the grid with
``tune.grid_search``, random search samples ``num_samples`` points, and bayes
uses Ray's ``HyperOptSearch`` (TPE) on the same hyperopt space as the
hyperopt tool.
"""

import math
import os

from recbole_diffusion.utils import ConfigError

__all__ = ["ray_trainable", "run_ray_search"]


def _result_collector():
    """A Ray Tune callback that keeps each trial's last reported result."""
    from ray.tune import Callback

    class ResultCollector(Callback):
        def __init__(self):
            self._trials = {}

        def _remember(self, trial, result=None, status=None):
            entry = self._trials.setdefault(
                trial.trial_id, {"config": dict(trial.config), "result": {}}
            )
            if result:
                entry["result"] = dict(result)
            entry["status"] = status or trial.status

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self._remember(trial, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._remember(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._remember(trial, status="ERROR")

        def trials(self):
            return [
                (trial_id, entry["status"], entry["config"], entry["result"])
                for trial_id, entry in self._trials.items()
            ]

    return ResultCollector()


def ray_trainable(
    trial_config, fixed_config_dict, config_file_list, defaults, bigger, saved
):
    """One Ray trial: train with the trial's parameters and report the results."""
    import torch
    from ray.air import session

    from recbole_diffusion.tuning.objective import TuningObjective

    torch.set_num_threads(1)
    params = dict(trial_config.get("_grid_point") or trial_config)
    fixed = dict(fixed_config_dict)
    # Concurrent trials must not share checkpoint files (named by start second).
    fixed["checkpoint_dir"] = os.path.join(
        fixed["checkpoint_dir"], f"trial_{session.get_trial_id()}"
    )
    objective = TuningObjective(fixed, defaults, bigger, saved=saved)
    result = objective(params, config_file_list)
    session.report(
        {
            "valid_score": float(result["best_valid_score"]),
            "params": objective.trials[-1]["params"],
            "best_valid_result": dict(result["best_valid_result"] or {}),
            "test_result": dict(result["test_result"] or {}),
            "error": result.get("error", ""),
            "model_file": result.get("model_file") or "",
        }
    )


def _ray_space(params, algo, trials_wanted):
    from ray import tune

    from recbole_diffusion.tuning.space import exhaustive_grid

    if algo == "exhaustive":
        return {"_grid_point": tune.grid_search(exhaustive_grid(params, trials_wanted))}
    space = {}
    for param in params:
        if param.kind == "choice":
            space[param.name] = tune.choice(list(param.values))
        elif param.kind == "uniform":
            space[param.name] = tune.uniform(*param.values)
        elif param.kind == "quniform":
            space[param.name] = tune.quniform(*param.values)
        else:  # bounds are natural logarithms, as in hyperopt
            low, high = param.values
            space[param.name] = tune.loguniform(math.exp(low), math.exp(high))
    return space


def run_ray_search(
    params,
    hyperopt_space,
    fixed_config_dict,
    config_file_list,
    defaults,
    algo,
    trials_wanted,
    bigger,
    storage_dir,
    num_cpus=None,
    name="tuning",
    saved=True,
):
    """Run the trials with Ray Tune; return one dict per trial (as the hyperopt tool)."""
    try:
        import ray
        from ray import tune
    except ImportError as error:
        raise ConfigError(
            f"--tool=ray needs Ray ({error}). Install it with "
            "pip install 'recbole-diffusion[ray]' (ray 2.6.3, setuptools<81)."
        ) from error

    cores = os.cpu_count() or 1
    num_cpus = num_cpus or min(2, cores)
    fixed = dict(fixed_config_dict)
    # Ray workers may run in other folders: paths must not depend on the cwd.
    fixed["checkpoint_dir"] = os.path.abspath(
        fixed.get("checkpoint_dir") or defaults.get("checkpoint_dir") or "saved"
    )
    if fixed.get("data_path"):
        fixed["data_path"] = os.path.abspath(fixed["data_path"])
    if config_file_list:
        config_file_list = [os.path.abspath(path) for path in config_file_list]
    mode = "max" if bigger else "min"

    search_alg = None
    if algo == "bayes":
        from ray.tune.search.hyperopt import HyperOptSearch

        search_alg = HyperOptSearch(
            space=hyperopt_space, metric="valid_score", mode=mode
        )
        space = None
    else:
        space = _ray_space(params, algo, trials_wanted)

    collector = _result_collector()
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        ignore_reinit_error=True,
        log_to_driver=False,
    )
    try:
        trainable = tune.with_parameters(
            ray_trainable,
            fixed_config_dict=fixed,
            config_file_list=config_file_list,
            defaults=defaults,
            bigger=bigger,
            saved=saved,
        )
        try:
            tune.run(
                trainable,
                name=name,
                config=space,
                search_alg=search_alg,
                num_samples=1 if algo == "exhaustive" else trials_wanted,
                metric="valid_score",
                mode=mode,
                resources_per_trial={"cpu": 1},
                storage_path=os.path.abspath(storage_dir),
                chdir_to_trial_dir=False,
                raise_on_failed_trial=False,
                callbacks=[collector],
                verbose=1,
            )
        except RuntimeError as error:
            # Ray 2.6 builds its ExperimentAnalysis with pyarrow (an extra of
            # ray[tune]) once all trials have ended, even for a local folder;
            # the results are already in the collector.
            if "pyarrow" not in str(error):
                raise
    finally:
        ray.shutdown()

    trials = []
    for trial_id, status, config, result in collector.trials():
        params_of_trial = result.get("params") or dict(
            config.get("_grid_point") or config
        )
        if "valid_score" not in result:
            trials.append(
                {
                    "params": params_of_trial,
                    "best_valid_score": -math.inf if bigger else math.inf,
                    "best_valid_result": {},
                    "test_result": {},
                    "error": f"Ray trial {trial_id} failed ({status}); see its "
                    f"error.txt under {storage_dir}",
                }
            )
            continue
        trials.append(
            {
                "params": params_of_trial,
                "best_valid_score": result["valid_score"],
                "valid_score_bigger": bigger,
                "best_valid_result": result.get("best_valid_result") or {},
                "test_result": result.get("test_result") or {},
                "error": result.get("error") or None,
                "model_file": result.get("model_file") or None,
            }
        )
    return trials
