"""Checks of RecBole's atomic files, before RecBole parses them.

RecBole 1.2.1 reads an atomic file's header with ``field.split(":")`` and the
rows with pandas, so a comma-separated file, an untyped header, a missing
column or a word in a ``float`` column ends in a ``ValueError`` or
``KeyError`` traceback from deep inside the dataset code, sometimes minutes
into a run. These checks read the files once, as RecBole will, and refuse the
first problem with one line that names the file, the line and the fix.

The checks run on the resolved configuration (``build_config``) and cost one
pass over each file (about a second for ml-1m's million rows); the result is
remembered per file path, size and modification time, so the trials of a
tuning run check each file once.
"""

import os
from pathlib import Path

from recbole_diffusion.utils import ConfigError

__all__ = ["check_atomic_files", "check_interactions_left"]

# RecBole's FeatureType values.
FEATURE_TYPES = ("token", "token_seq", "float", "float_seq")
_EXAMPLE_HEADER = "user_id:token<TAB>item_id:token<TAB>timestamp:float"

# (path, size, mtime_ns, settings) of the files already found valid.
_checked = set()


def _setting(config, key, default=None):
    try:
        value = config[key]
    except KeyError:
        return default
    return default if value is None else value


def _files_to_read(config):
    """The atomic files RecBole will read, each with its load_col key."""
    folder = Path(config["data_path"])
    name = config["dataset"]
    parts = _setting(config, "benchmark_filename")
    if parts:
        inter = [folder / f"{name}.{part}.inter" for part in parts]
    else:
        inter = [folder / f"{name}.inter"]
    files = [(path, "inter") for path in inter]
    for source in ("user", "item"):
        path = folder / f"{name}.{source}"
        if path.is_file():
            files.append((path, source))
    return files


def _parse_header(path, line, separator):
    """``[(name, type), ...]`` of a header line, or a ConfigError."""
    if not line.strip():
        raise ConfigError(
            f"{path} is empty or starts with a blank line: line 1 must be the "
            f"header, e.g. {_EXAMPLE_HEADER}."
        )
    fields = line.split(separator)
    if len(fields) == 1 and separator == "\t" and "," in line:
        raise ConfigError(
            f"{path} line 1 is comma-separated; RecBole reads tab-separated "
            f"files: write {_EXAMPLE_HEADER} (or set field_separator)."
        )
    columns = []
    for field in fields:
        name, colon, kind = field.partition(":")
        if not colon or ":" in kind or not name:
            raise ConfigError(
                f"{path} line 1: column '{field}' has no type; the header "
                f"names each column with its type, e.g. {_EXAMPLE_HEADER}."
            )
        if kind not in FEATURE_TYPES:
            raise ConfigError(
                f"{path} line 1: column '{name}' has type '{kind}'; use one of "
                f"{', '.join(FEATURE_TYPES)} (e.g. {name}:token)."
            )
        columns.append((name, kind))
    return columns


def _check_required(path, columns, source, config):
    names = [name for name, _ in columns]
    load_col = _setting(config, "load_col")
    loaded = None
    if isinstance(load_col, dict) and source in load_col:
        loaded = list(load_col[source] or [])
    if source == "inter":
        required = [
            _setting(config, "USER_ID_FIELD", "user_id"),
            _setting(config, "ITEM_ID_FIELD", "item_id"),
        ]
        eval_args = _setting(config, "eval_args", {})
        time_ordered = isinstance(eval_args, dict) and eval_args.get("order") == "TO"
        time_field = _setting(config, "TIME_FIELD", "timestamp")
        if time_ordered:
            required.append(time_field)
        for name in required:
            if name not in names:
                fix = (
                    f"add a column {name}:float (the order of the interactions, "
                    "which the time-ordered split needs), or set eval_args order "
                    "to RO"
                    if time_ordered and name == time_field
                    else f"add a column {name}:token"
                )
                raise ConfigError(
                    f"{path} line 1 has no column '{name}' (its columns: "
                    f"{', '.join(names)}); {fix}."
                )
            if loaded is not None and name not in loaded:
                raise ConfigError(
                    f"load_col['inter'] leaves out '{name}', which the model "
                    f"needs; add it to load_col (now {loaded})."
                )
    for name in loaded or []:
        if name not in names:
            raise ConfigError(
                f"{path} has no column '{name}', which load_col['{source}'] asks "
                f"for (its columns: {', '.join(names)}); fix load_col or the header."
            )


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_rows(path, handle, columns, separator, seq_separator, encoding):
    width = len(columns)
    numeric = [i for i, (_, kind) in enumerate(columns) if kind == "float"]
    numeric_seq = [i for i, (_, kind) in enumerate(columns) if kind == "float_seq"]
    rows = 0
    # Lines are decoded one at a time (the file is opened in binary), so that
    # a bad byte is reported at its own line, not at the start of a buffer.
    for number, raw in enumerate(handle, start=2):
        try:
            line = raw.decode(encoding).rstrip("\r\n")
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"{path} line {number} is not valid text in the configured "
                f"encoding {encoding} ({error.reason}); save the file as UTF-8 "
                "or set encoding."
            ) from None
        if not line:
            continue  # pandas skips blank lines
        values = line.split(separator)
        if len(values) != width:
            raise ConfigError(
                f"{path} line {number} has {len(values)} fields, the header "
                f"{width}; write one tab-separated value per column."
            )
        for i in numeric:
            if values[i] and not _is_number(values[i]):
                raise ConfigError(
                    f"{path} line {number}: '{values[i]}' in column "
                    f"'{columns[i][0]}' (type float) is not a number; write a "
                    f"number or declare the column {columns[i][0]}:token."
                )
        for i in numeric_seq:
            for part in values[i].split(seq_separator):
                if part and not _is_number(part):
                    raise ConfigError(
                        f"{path} line {number}: '{part}' in column "
                        f"'{columns[i][0]}' (type float_seq) is not a number."
                    )
        rows += 1
    if rows == 0:
        raise ConfigError(
            f"{path} has a header but no data rows; add one interaction per line "
            "below the header."
        )


def check_atomic_file(path, source, config):
    """Check one atomic file (``source``: ``inter``, ``user`` or ``item``)."""
    separator = _setting(config, "field_separator", "\t")
    seq_separator = _setting(config, "seq_separator", " ")
    encoding = _setting(config, "encoding", "utf-8")
    stat = os.stat(path)
    settings = (
        separator,
        seq_separator,
        encoding,
        repr(_setting(config, "load_col")),
        repr(_setting(config, "eval_args")),
    )
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, settings)
    if key in _checked:
        return
    with open(path, "rb") as handle:
        try:
            header = handle.readline().decode(encoding)
        except UnicodeDecodeError as error:
            raise ConfigError(
                f"{path} line 1 is not valid text in the configured encoding "
                f"{encoding} ({error.reason}); save the file as UTF-8 or set "
                "encoding."
            ) from None
        columns = _parse_header(path, header.rstrip("\r\n"), separator)
        _check_required(path, columns, source, config)
        _check_rows(path, handle, columns, separator, seq_separator, encoding)
    _checked.add(key)


def check_atomic_files(config):
    """Check every atomic file RecBole will read for ``config``'s dataset.

    Files that do not exist are left to the dataset lookup's own message.

    Raises:
        ConfigError: one line naming the file, the line and the fix.
    """
    for path, source in _files_to_read(config):
        if path.is_file():
            check_atomic_file(path, source, config)


def nothing_left_error(config):
    """The error for a dataset that RecBole's filters left empty."""
    filters = {
        key: _setting(config, key)
        for key in (
            "user_inter_num_interval",
            "item_inter_num_interval",
            "val_interval",
        )
        if _setting(config, key) not in (None, "[0,inf)", "[0, inf)", {})
    }
    described = ", ".join(f"{k}={v}" for k, v in filters.items()) or "none set"
    return ConfigError(
        f"Dataset '{config['dataset']}' has no interactions left after RecBole's "
        f"filters ({described}); relax them (e.g. --user_inter_num_interval="
        "'[0,inf)')."
    )


def check_interactions_left(config, dataset):
    """Refuse a dataset that RecBole's filters left without interactions.

    Raises:
        ConfigError: naming the filter settings to relax.
    """
    if dataset.inter_num == 0:
        raise nothing_left_error(config)
