"""Hyperparameter search with RecBole's ``HyperTuning`` or Ray Tune.

``python run_recbole_diffusion.py --model=DuoRec --tune`` searches the space in
``props/hyper/DuoRec.hyper`` (or ``--params_file``), one full training per
trial, and writes every trial's valid and test result to ``--output_file`` and
a markdown summary to ``<output_file>.md``.

A search-space file has one parameter per line, in RecBole's format
``name type values``::

    learning_rate choice [1e-3,5e-4]
    tau uniform 0.1,1.0
    diffusion_steps quniform 8,64,8
    weight_decay loguniform -9,-4

``choice`` takes a Python literal list; ``uniform`` ``low,high``; ``quniform``
``low,high,q`` (multiples of ``q``); ``loguniform`` ``low,high`` as natural
logarithms, as in hyperopt (``-9,-4`` is 1.2e-4 to 1.8e-2). Blank lines and
lines starting with ``#`` are skipped. Unlike RecBole, which skips lines it
cannot read and ``eval``-s the values, every line is checked before the first
trial: an unknown parameter name (not a key of the model's configuration), a
malformed line or an empty range stops the search with a message, and values
are read with ``ast.literal_eval``, never executed.

The objective is :func:`recbole_diffusion.quick_start.objective_function`,
which a plain RecBole script can use as it is::

    from recbole.trainer import HyperTuning
    from recbole_diffusion.quick_start import objective_function

    tuner = HyperTuning(
        objective_function,
        algo="exhaustive",
        params_file="props/hyper/DuoRec.hyper",
        fixed_config_file_list=["fixed.yaml"],  # model: DuoRec, dataset: ml-100k, ...
    )
    tuner.run()
    tuner.export_result(output_file="hyper_DuoRec.result")
    print(tuner.best_params)

``--tool=ray`` runs the trials with Ray Tune on a local Ray instance
(``ray.init(num_cpus=--ray_cpus)``, one CPU per trial), as RecBole's
``run_hyper.py`` does; Ray is imported only then.
"""

from recbole_diffusion.tuning.objective import TuningObjective
from recbole_diffusion.tuning.run import ALGORITHMS, TOOLS, run_tuning
from recbole_diffusion.tuning.space import (
    PARAM_TYPES,
    SearchParameter,
    check_parameters,
    coerce_value,
    default_params_file,
    exhaustive_grid,
    hyperopt_space,
    read_params_file,
)

__all__ = [
    "ALGORITHMS",
    "PARAM_TYPES",
    "TOOLS",
    "SearchParameter",
    "TuningObjective",
    "check_parameters",
    "coerce_value",
    "default_params_file",
    "exhaustive_grid",
    "hyperopt_space",
    "read_params_file",
    "run_tuning",
]
