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

import ast
import datetime
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

from recbole_diffusion.config import build_config, props_dir
from recbole_diffusion.utils import ConfigError, _closest

__all__ = [
    "ALGORITHMS",
    "PARAM_TYPES",
    "SearchParameter",
    "TuningObjective",
    "check_parameters",
    "default_params_file",
    "hyperopt_space",
    "read_params_file",
    "run_tuning",
]

PARAM_TYPES = ("choice", "uniform", "quniform", "loguniform")
ALGORITHMS = ("exhaustive", "random", "bayes")
TOOLS = ("hyperopt", "ray")
DEFAULT_MAX_EVALS = 10


@dataclass
class SearchParameter:
    """One line of a search-space file."""

    name: str
    kind: str  # one of PARAM_TYPES
    values: tuple  # choice: the values; (low, high); quniform: (low, high, q)
    line: int = 0

    def grid(self):
        """Every value an exhaustive search tries, or ``None`` for a continuous range."""
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "quniform":
            low, high, q = self.values
            # hyperopt's quniform: round(uniform(low, high) / q) * q
            first, last = round(low / q), round(high / q)
            return [_tidy(step * q) for step in range(first, last + 1)]
        return None

    def describe(self):
        if self.kind == "choice":
            return ", ".join(map(repr, self.values))
        if self.kind == "quniform":
            low, high, q = self.values
            return f"{low:g} to {high:g}, step {q:g}"
        low, high = self.values
        if self.kind == "loguniform":
            return f"{math.exp(low):.3g} to {math.exp(high):.3g}, log-uniform"
        return f"{low:g} to {high:g}, uniform"


def _tidy(value):
    value = round(value, 12)
    return int(value) if float(value).is_integer() else value


def _line_error(path, number, text, reason):
    return ConfigError(f"Params file '{path}', line {number} ('{text}'): {reason}")


def _numbers(path, number, text, raw, count):
    parts = [part.strip() for part in raw.split(",")]
    shape = "low,high" if count == 2 else "low,high,q"
    if len(parts) != count:
        raise _line_error(path, number, text, f"give {shape}, e.g. 0.1,0.5.")
    try:
        return tuple(float(part) for part in parts)
    except ValueError:
        raise _line_error(
            path, number, text, f"'{raw}' is not {shape} as numbers."
        ) from None


def read_params_file(path):
    """Read a search-space file.

    Raises:
        ConfigError: a missing file, a malformed line, an unknown type, an
            empty range or a parameter given twice.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise ConfigError(f"Params file '{path}' does not exist.")
    params, seen = [], {}
    with open(path, encoding="utf-8") as handle:
        for number, raw_line in enumerate(handle, start=1):
            text = raw_line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split(None, 2)
            if len(parts) < 3:
                raise _line_error(
                    path,
                    number,
                    text,
                    "expected 'name type values', e.g. "
                    "'learning_rate choice [1e-3,5e-4]'.",
                )
            name, kind, raw = parts
            if kind not in PARAM_TYPES:
                raise _line_error(
                    path,
                    number,
                    text,
                    f"unknown type '{kind}'.{_closest(kind, list(PARAM_TYPES))} "
                    f"Types: {', '.join(PARAM_TYPES)}.",
                )
            if name in seen:
                raise _line_error(
                    path, number, text, f"'{name}' is already set on line {seen[name]}."
                )
            if kind == "choice":
                try:
                    values = ast.literal_eval(raw.replace(" ", ""))
                except (ValueError, SyntaxError):
                    try:
                        values = ast.literal_eval(raw)
                    except (ValueError, SyntaxError):
                        raise _line_error(
                            path,
                            number,
                            text,
                            f"'{raw}' is not a list of literal values, "
                            "e.g. [1e-3,5e-4] or ['cos','dot'].",
                        ) from None
                if not isinstance(values, (list, tuple)):
                    raise _line_error(
                        path, number, text, f"choice needs a list, got '{raw}'."
                    )
                if not values:
                    raise _line_error(
                        path,
                        number,
                        text,
                        "the range is empty: list at least one value.",
                    )
                values = tuple(values)
            elif kind == "quniform":
                low, high, q = _numbers(path, number, text, raw, 3)
                if q <= 0:
                    raise _line_error(
                        path, number, text, f"the step q={q:g} must be > 0."
                    )
                if low > high or round(high / q) < round(low / q):
                    raise _line_error(
                        path,
                        number,
                        text,
                        f"the range {low:g} to {high:g} is empty: low must be <= high.",
                    )
                values = (low, high, q)
            else:
                low, high = _numbers(path, number, text, raw, 2)
                if not low < high:
                    raise _line_error(
                        path,
                        number,
                        text,
                        f"the range {low:g} to {high:g} is empty: low must be < high.",
                    )
                values = (low, high)
            seen[name] = number
            params.append(SearchParameter(name, kind, values, number))
    if not params:
        raise ConfigError(
            f"Params file '{path}' holds no parameter: give one 'name type values' "
            "line per parameter, e.g. 'learning_rate choice [1e-3,5e-4]'."
        )
    return params


def default_params_file(model):
    """The shipped search space of ``model``: ``props/hyper/<Model>.hyper``.

    A variant (``DiffuRecSys-V1``) uses its own file if there is one, else its
    base model's. Returns ``None`` when there is neither.
    """
    folder = props_dir() / "hyper"
    for name in (model, model.split("-", 1)[0]):
        candidate = folder / f"{name}.hyper"
        if candidate.is_file():
            return candidate
    return None


def _same_kind(default, value):
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple, dict)):
        return isinstance(value, (list, tuple, dict))
    return True


def check_parameters(params, config, build_args):
    """Refuse names the model's configuration lacks and values it refuses.

    Args:
        params (list[SearchParameter]): the search space.
        config (Config): the configuration built once with the fixed settings.
        build_args (dict): the arguments of :func:`build_config` that gave
            ``config``; each choice value is checked by building the
            configuration again with it (no data is loaded).
    """
    known = dict(config.final_config_dict)
    for param in params:
        if param.name not in known:
            raise ConfigError(
                f"Params file line {param.line}: '{param.name}' is not a parameter "
                f"of {config['model_variant'] or config['model']}."
                f"{_closest(param.name, list(known))} Parameters come from RecBole's "
                "defaults and props/*.yaml, e.g. "
                f"{', '.join(sorted(k for k in known if not k.isupper())[:8])} ..."
            )
        default = known[param.name]
        candidates = param.grid() if param.kind != "uniform" else list(param.values)
        if param.kind == "loguniform":
            candidates = [math.exp(v) for v in param.values]
        for value in candidates or []:
            value = coerce_value(default, value)
            if not _same_kind(default, value):
                raise ConfigError(
                    f"Params file line {param.line}: {param.name}={value!r} does not "
                    f"have the type of its default {default!r}."
                )
        if param.kind != "choice":
            continue
        for value in param.values:
            overrides = dict(build_args.get("config_dict") or {})
            overrides[param.name] = value
            args = dict(build_args, config_dict=overrides)
            # The command line outranks config_dict; the tuned value must win.
            args["cmd_args"] = {
                k: v for k, v in (args.get("cmd_args") or {}).items() if k != param.name
            }
            try:
                build_config(**args)
            except ConfigError as error:
                raise ConfigError(
                    f"Params file line {param.line}: {param.name}={value!r} is "
                    f"refused: {error}"
                ) from error


def coerce_value(default, value):
    """A sampled value in the type of the parameter's default (hyperopt gives floats)."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        value = value.item()  # numpy scalar
    if (
        isinstance(default, int)
        and not isinstance(default, bool)
        and isinstance(value, float)
        and value.is_integer()
    ):
        return int(value)
    return value


def hyperopt_space(params, algo):
    """The hyperopt space of ``params``; exhaustive search enumerates grids."""
    from hyperopt import hp

    space = {}
    for param in params:
        if algo == "exhaustive":
            grid = param.grid()
            if grid is None:
                raise ConfigError(
                    f"Params file line {param.line}: exhaustive search cannot "
                    f"enumerate the continuous range of '{param.name}' ({param.kind}). "
                    "Use choice or quniform, or --algo=random or --algo=bayes."
                )
            space[param.name] = hp.choice(param.name, grid)
        elif param.kind == "choice":
            space[param.name] = hp.choice(param.name, list(param.values))
        elif param.kind == "uniform":
            space[param.name] = hp.uniform(param.name, *param.values)
        elif param.kind == "quniform":
            space[param.name] = hp.quniform(param.name, *param.values)
        else:
            space[param.name] = hp.loguniform(param.name, *param.values)
    return space


def _grid_size(params):
    return math.prod(len(param.grid()) for param in params)


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
        output_file (str): every trial's results; the summary goes to
            ``<output_file>.md``. Default ``hyper_<Model>_<dataset>.result``.
        tool (str): ``hyperopt`` (RecBole's ``HyperTuning``) or ``ray``.
        ray_cpus (int): CPUs of the local Ray instance (default: up to 2).

    Returns:
        dict: ``best_params``, ``best_valid_score``, ``best_valid_result``,
        ``best_test_result``, ``trials`` (one dict per trial), ``output_file``
        and ``summary_file``.

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
        total = _grid_size(params)
        trials_wanted = min(total, max_evals) if max_evals else total
    else:
        trials_wanted = max_evals or DEFAULT_MAX_EVALS
    output_file = output_file or f"hyper_{model}_{dataset}.result"
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
        from recbole_diffusion.tuning_ray import run_ray_search

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
        "grid_size": _grid_size(params) if algo == "exhaustive" else None,
        "started": started,
        "finished": datetime.datetime.now(),
    }
    summary_file = output_file + ".md"
    _write_results(output_file, summary)
    _write_markdown(summary_file, summary)
    return {
        "best_params": best["params"] if best else None,
        "best_valid_score": best["best_valid_score"] if best else None,
        "best_valid_result": best["best_valid_result"] if best else None,
        "best_test_result": best["test_result"] if best else None,
        "trials": trials,
        "output_file": output_file,
        "summary_file": summary_file,
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


# --------------------------------------------------------------------------- #
# output
# --------------------------------------------------------------------------- #
def _params_text(params):
    return ", ".join(f"{name}:{value}" for name, value in params.items())


def _result_text(result):
    from recbole.utils import dict2str

    return dict2str(result) if result else "(none)"


def _write_results(path, summary):
    """Every trial in RecBole's ``export_result`` layout, best first."""
    best = summary["best"]
    lines = [
        f"# {summary['model']} on {summary['dataset']}: {summary['algo']} search "
        f"({summary['tool']}), {len(summary['trials'])} trials",
        f"# best by valid {summary['valid_metric']}: "
        + (_params_text(best["params"]) if best else "no trial finished"),
        "",
    ]
    for trial in summary["trials"]:
        lines.append(_params_text(trial["params"]))
        if trial.get("error"):
            lines += [f"Failed: {trial['error']}", ""]
            continue
        lines += [
            "Valid result:",
            _result_text(trial["best_valid_result"]),
            "Test result:",
            _result_text(trial["test_result"]),
            "",
        ]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value).replace("|", "\\|")


def _write_markdown(path, summary):
    params = summary["params"]
    trials = summary["trials"]
    best = summary["best"]
    metric = summary["valid_metric"]
    test_keys = []
    for trial in trials:
        for key in trial.get("test_result") or {}:
            if key not in test_keys:
                test_keys.append(key)
    fixed = {k: v for k, v in summary["fixed"].items() if k not in ("model", "dataset")}
    planned = summary["grid_size"]
    lines = [
        f"# Hyperparameter search: {summary['model']} on {summary['dataset']}",
        "",
        f"- Search: {summary['algo']} with {summary['tool']}, "
        f"{len(trials)} trials"
        + (f" of a {planned}-point grid" if planned else "")
        + f", from {summary['started']:%Y-%m-%d %H:%M} to "
        f"{summary['finished']:%Y-%m-%d %H:%M}.",
        f"- Selection: best valid {metric} "
        f"({'higher' if summary['bigger'] else 'lower'} is better); test results "
        "are of the checkpoint with the best valid score of each trial.",
        f"- Search space: `{summary['params_file']}`.",
        "- Fixed settings (beyond the model's and RecBole's defaults): "
        + (", ".join(f"`{k}={v}`" for k, v in fixed.items()) or "none")
        + (
            "; config files: "
            + ", ".join(f"`{f}`" for f in summary["config_file_list"])
            if summary["config_file_list"]
            else ""
        )
        + ".",
        "",
        "## Search space",
        "",
        "| parameter | type | values |",
        "|---|---|---|",
    ]
    lines += [f"| {p.name} | {p.kind} | {_cell(p.describe())} |" for p in params]
    lines += ["", "## Best parameters", ""]
    if best:
        lines += [f"- `{name}`: {value}" for name, value in best["params"].items()]
        lines += [
            "",
            f"Valid {metric}: {_cell(best['best_valid_score'])}. Test: "
            + ", ".join(f"{k} {_cell(v)}" for k, v in best["test_result"].items())
            + ".",
        ]
    else:
        lines.append("No trial finished.")
    names = [p.name for p in params]
    header = ["#"] + names + [f"valid {metric}"] + [f"test {k}" for k in test_keys]
    lines += [
        "",
        "## Trials",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for number, trial in enumerate(trials, start=1):
        mark = " (best)" if trial is best else ""
        row = [f"{number}{mark}"]
        row += [str(trial["params"].get(n, "")).replace("|", "\\|") for n in names]
        if trial.get("error"):
            row += ["failed: " + _cell(trial["error"])[:120]] + [""] * len(test_keys)
        else:
            row += [_cell(trial["best_valid_score"])]
            row += [_cell(trial["test_result"].get(k, "")) for k in test_keys]
        lines.append("| " + " | ".join(row) + " |")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def exhaustive_grid(params, limit=None):
    """Every combination of the grid, in order (the Ray tool's exhaustive search)."""
    names = [p.name for p in params]
    combos = itertools.product(*(p.grid() for p in params))
    if limit:
        combos = itertools.islice(combos, limit)
    return [dict(zip(names, combo)) for combo in combos]
