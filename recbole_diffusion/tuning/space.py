"""Search spaces: read a search-space file, check it, turn it into hyperopt's.

A line is ``name type values`` (RecBole's format); see the package docstring.
Everything here runs before the first trial, so a bad file stops the search
with a message that names the line.
"""

import ast
import itertools
import math
import os
from dataclasses import dataclass

from recbole_diffusion.config import build_config, props_dir
from recbole_diffusion.utils import ConfigError, _closest

__all__ = [
    "PARAM_TYPES",
    "SearchParameter",
    "check_parameters",
    "coerce_value",
    "default_params_file",
    "exhaustive_grid",
    "grid_size",
    "hyperopt_space",
    "read_params_file",
]

PARAM_TYPES = ("choice", "uniform", "quniform", "loguniform")


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


def grid_size(params):
    return math.prod(len(param.grid()) for param in params)


def exhaustive_grid(params, limit=None):
    """Every combination of the grid, in order (the Ray tool's exhaustive search)."""
    names = [p.name for p in params]
    combos = itertools.product(*(p.grid() for p in params))
    if limit:
        combos = itertools.islice(combos, limit)
    return [dict(zip(names, combo)) for combo in combos]
