"""The objective every trial calls, shared by the hyperopt and Ray back ends."""

import math

from recbole_diffusion.tuning.space import coerce_value
from recbole_diffusion.utils import ConfigError

__all__ = ["TuningObjective"]


class TuningObjective:
    """The objective ``HyperTuning`` calls: the plugin's objective plus fixed settings.

    ``HyperTuning`` passes only the trial's parameters and the fixed config
    files; the model, dataset and ``--key=value`` settings of the command are
    merged in here (trial parameters win). Failed trials (a refused
    combination, a diverged loss) are recorded and scored as the worst
    possible, so the search goes on.
    """

    def __init__(self, fixed_config_dict, defaults, valid_metric_bigger, saved=True):
        self.fixed_config_dict = dict(fixed_config_dict)
        self.defaults = dict(defaults)
        self.valid_metric_bigger = valid_metric_bigger
        self.saved = saved
        self.trials = []

    def merged(self, params):
        config_dict = dict(self.fixed_config_dict)
        for name, value in params.items():
            config_dict[name] = coerce_value(self.defaults.get(name), value)
        return config_dict

    def __call__(self, config_dict=None, config_file_list=None):
        from recbole_diffusion.quick_start import objective_function
        from recbole_diffusion.trainer import TrainingDivergedError

        params = {
            name: coerce_value(self.defaults.get(name), value)
            for name, value in (config_dict or {}).items()
        }
        try:
            result = objective_function(
                self.merged(params), config_file_list, saved=self.saved
            )
        except (ConfigError, TrainingDivergedError) as error:
            worst = -math.inf if self.valid_metric_bigger else math.inf
            result = {
                "model": self.fixed_config_dict.get("model"),
                "best_valid_score": worst,
                "valid_score_bigger": self.valid_metric_bigger,
                "best_valid_result": {},
                "test_result": {},
                "error": str(error),
            }
            print(f"trial failed: {error}")
        self.trials.append({"params": params, **result})
        return result
