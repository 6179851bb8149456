"""The run command: ``python run_recbole_diffusion.py --model=ADRec --dataset=ml-1m``.

Flags of the command itself are listed in ``USAGE``; every other
``--key=value`` is a RecBole parameter with the highest precedence. A usage
error or an invalid configuration exits with status 2 and a one-line reason;
a diverged training (or a failed worker process) exits with status 1.
"""

import argparse
import sys
from pathlib import Path

USAGE = """usage: {prog} [-m NAME] [-d NAME] [--config_files="a.yaml b.yaml"]
           [--resume=FILE] [--nproc=N [--world_size=W --ip=IP --port=P --offset=O]]
           [--key=value ...]
       {prog} --tune [--params_file=FILE] [--algo=exhaustive] [--max_evals=N]
           [--early_stop=N] [--output_file=FILE] [--display_file=FILE]
           [--tool=hyperopt|ray] [--ray_cpus=N] [-m NAME] [--key=value ...]
       {prog} --recommend --model_file=FILE --user_ids=ID,ID,... [--topk=10]
           [--output_file=FILE.csv] [--dataset=NAME] [--include_seen]
       {prog} --version

Trains a model (default: ADRec) on a dataset (default: ml-100k, bundled with
RecBole), picks the best epoch on validation and reports valid and test metrics.
Flags take '--flag value' or '--flag=value'; parameters take --key=value.

  -m, --model NAME      a plugin model: ADRec, CDDRec, DiffuRec, DiffuRecSys, DuoRec,
                        SASRec+; a variant: DiffuRecSys-V1, DiffuRecSys-V2,
                        DiffuRecSys-Baseline, DiffuRecSys-Ensemble, the ablations
                        DiffuRec-Lambda0, DiffuRecSys-Lambda0, ADRec-Lambda0,
                        ADRec-Lambda0.01, ADRec-Lambda0.1, ADRec-Lambda1, and
                        CDDRec-beauty, CDDRec-toys (the paper's per-dataset
                        settings); or any RecBole model (SASRec, GRU4Rec, BERT4Rec ...)
  -d, --dataset NAME    ml-100k (bundled), amazon-beauty, amazon-toys, ml-1m, or
                        your own atomic files with --data_path=FOLDER
  --config_files FILES  space-separated yaml files, lowest precedence first
  --resume FILE         resume training from a checkpoint written by this plugin
  --key=value           any RecBole or model parameter, e.g. --learning_rate=1e-3;
                        a key that no property file (nor one of your
                        --config_files) defines is refused, with the closest name
  --epochs=N            the epoch budget of the whole run; for ADRec it also caps
                        stage 1 (pretrain_epochs) and stage 2 (warmup_epochs)
                        unless those keys are given too
  --version             print the versions of this package, RecBole and torch
  -h, --help            show this message

ADRec on ml-100k uses a schedule sized for a first run (25 + 1 + 8 epochs, about 4
minutes on 2 CPU cores); the paper's 200 + 5 + 200 epochs are one file away:
  --config_files=props/ADRec/paper-schedule.yaml

Multi-process training (torch DDP; backend nccl on GPUs, gloo on CPUs, or
--backend=gloo|nccl). Each process trains on 1/N of every batch; every test
user is evaluated exactly once; only rank 0 writes the checkpoint and prints:
  --nproc=N             processes on this machine (at most its GPUs, or CPU cores)
  --world_size=W        processes on all machines (default N)
  --ip=IP --port=P      address of the machine of rank 0 (default localhost and,
                        on one machine, a free port)
  --offset=O            rank of this machine's first process (default 0; RecBole's
                        spelling --group_offset also works)

Hyperparameter search (RecBole's HyperTuning, one full training per trial):
  --tune                search instead of training once
  --params_file=FILE    search space, lines 'name type values' (choice, uniform,
                        quniform, loguniform); default props/hyper/<MODEL>.hyper
  --algo=NAME           exhaustive (every grid point; default), random, bayes
  --max_evals=N         trials of random/bayes (default 10); caps exhaustive
  --early_stop=N        stop after N trials without improvement (default: never
                        for exhaustive, 10 otherwise; hyperopt tool only)
  --output_file=FILE    every trial's results (default
                        log/tuning/hyper_<MODEL>_<DATASET>.result); beside it
                        FILE.json and FILE.csv (parameters, metrics, checkpoint
                        of each trial) and a markdown summary FILE.md
  --display_file=FILE   a figure of every trial's valid score (.html, .png,
                        .svg, .pdf), as RecBole's display_file
  --tool=NAME           hyperopt (default) or ray: Ray Tune on a local Ray
                        instance, one CPU per trial
  --ray_cpus=N          CPUs of the local Ray instance (default 2, or fewer cores)
  Fixed settings (--model, --dataset, --config_files, --key=value) apply to every
  trial; values in the params file override them.

Recommendations from a checkpoint written by this plugin:
  --recommend           print each user's top-k items (tokens of the atomic file)
  --model_file=FILE     the checkpoint (read with weights_only=True)
  --user_ids=ID,ID      user tokens as in the atomic file
  --topk=K              items per user (default 10)
  --output_file=FILE    also write CSV: user, rank, item, score
  --dataset=NAME        optional: refuse a checkpoint of another dataset
  --include_seen        keep items the user already has (left out by default,
                        as in RecBole's case_study.full_sort_topk)
  A user's history is everything the dataset holds for the user, test item
  included (its last MAX_ITEM_LIST_LENGTH items): the lists predict the next,
  unseen interaction.
"""

# Flags of the command that take an integer, and their smallest valid value.
_INT_FLAGS = {
    "nproc": 1,
    "world_size": 1,
    "port": 1,
    "offset": 0,
    "max_evals": 1,
    "early_stop": 1,
    "ray_cpus": 1,
    "topk": 1,
}
# Flags that may be given without a value (or with true/false).
SWITCHES = ("tune", "recommend", "include_seen")
TUNE_FLAGS = {
    "params_file",
    "algo",
    "max_evals",
    "early_stop",
    "tool",
    "ray_cpus",
    "display_file",
}
RECOMMEND_FLAGS = {"model_file", "user_ids", "include_seen"}
DISTRIBUTED_FLAGS = {"nproc", "world_size", "ip", "port", "offset"}


class UsageError(Exception):
    """A malformed command line."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised as one-line :class:`UsageError`
    (argparse itself prints the usage and exits)."""

    def error(self, message):
        raise UsageError(message)


def _switch(text):
    value = text.lower()
    if value not in ("true", "1", "yes", "false", "0", "no"):
        raise argparse.ArgumentTypeError(
            f"takes no value (or true/false), got '{text}'"
        )
    return value in ("true", "1", "yes")


def _int_at_least(smallest):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if value < smallest:
            raise argparse.ArgumentTypeError(f"must be >= {smallest}, got {value}")
        return value

    return parse


def _build_parser():
    # allow_abbrev=False: a parameter such as --output must not be taken for
    # --output_file. Every default is SUPPRESS, so that only given flags appear.
    parser = _Parser(
        prog=program_name(),
        add_help=False,
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("-h", "--help", action="store_true")
    parser.add_argument("--version", action="store_true")
    parser.add_argument("-m", "--model")
    parser.add_argument("-d", "--dataset")
    parser.add_argument("--config_files", type=str.split)
    parser.add_argument("--resume")
    for name in ("ip", "params_file", "algo", "output_file", "tool", "display_file"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--model_file")
    parser.add_argument("--user_ids")
    for name, smallest in _INT_FLAGS.items():
        if name not in ("offset", "topk"):
            parser.add_argument(f"--{name}", type=_int_at_least(smallest))
    # RecBole's run_recbole.py calls the rank offset --group_offset.
    parser.add_argument(
        "--offset", "--group_offset", dest="offset", type=_int_at_least(0)
    )
    for name in SWITCHES:
        parser.add_argument(f"--{name}", nargs="?", const=True, type=_switch)
    return parser


def program_name():
    """The name the user typed: the script, the console script or ``-m``."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if name in ("__main__.py", "-m", "-c", ""):
        return "python -m recbole_diffusion"
    return name


def parse_args(argv):
    """Split ``argv`` into the command's flags and ``--key=value`` parameters.

    The command's flags take ``--flag value`` or ``--flag=value`` (and ``-m``,
    ``-d``); every other argument is a RecBole parameter ``--key=value``, as
    RecBole's own ``run_recbole.py`` reads them.
    """
    argv = list(argv)
    namespace, rest = _build_parser().parse_known_args(argv)
    flags = vars(namespace)
    for name in ("help", "version"):
        if not flags.get(name):
            flags.pop(name, None)
    _refuse_repeated_flags(argv)
    params = {}
    for arg in rest:
        if not arg.startswith("--") or "=" not in arg:
            raise UsageError(
                f"cannot read '{arg}': parameters have the form --key=value "
                "(see --help)"
            )
        key, value = arg[2:].split("=", 1)
        if not key:
            raise UsageError(f"cannot read '{arg}': the key is empty")
        if key in params and params[key] != value:
            raise UsageError(f"--{key} is given twice with different values")
        params[key] = value
    # --topk is the recommendation count with --recommend, RecBole's metric
    # cut-offs otherwise.
    if flags.get("recommend") and "topk" in params:
        try:
            flags["topk"] = _int_at_least(1)(params.pop("topk"))
        except argparse.ArgumentTypeError as error:
            raise UsageError(f"argument --topk: {error}") from None
    _check_modes(flags)
    return flags, params


def _refuse_repeated_flags(argv):
    # argparse keeps the last of repeated flags silently; a run with two
    # different models or datasets is more likely a mistake.
    seen = {}
    aliases = {"-m": "model", "-d": "dataset", "group_offset": "offset"}
    words = iter(argv)
    for word in words:
        if not word.startswith("-") or word in ("-h", "--help"):
            continue
        name, _, value = word.lstrip("-").partition("=")
        name = aliases.get(word if word in aliases else name, name)
        if name not in ("model", "dataset", "config_files", "resume", "model_file"):
            continue
        if "=" not in word:
            value = next(words, "")
        if name in seen and seen[name] != value:
            raise UsageError(f"--{name} is given twice with different values")
        seen[name] = value


def _check_modes(flags):
    given = set(flags)
    if flags.get("tune") and flags.get("recommend"):
        raise UsageError("--tune and --recommend cannot be combined")
    mode = (
        "tune" if flags.get("tune") else "recommend" if flags.get("recommend") else None
    )
    if mode != "tune" and given & TUNE_FLAGS:
        flag = sorted(given & TUNE_FLAGS)[0]
        raise UsageError(f"--{flag} is only used with --tune")
    if mode != "recommend" and given & RECOMMEND_FLAGS:
        flag = sorted(given & RECOMMEND_FLAGS)[0]
        raise UsageError(f"--{flag} is only used with --recommend")
    if mode is None and "output_file" in given:
        raise UsageError("--output_file is only used with --tune or --recommend")
    if mode and given & DISTRIBUTED_FLAGS:
        flag = sorted(given & DISTRIBUTED_FLAGS)[0]
        raise UsageError(
            f"--{flag} (multi-process training) cannot be used with --{mode}"
        )
    if mode and "resume" in given:
        raise UsageError(f"--resume cannot be used with --{mode}")
    if mode == "recommend":
        for required in ("model_file", "user_ids"):
            if required not in given:
                raise UsageError(f"--recommend needs --{required}=...")
        if "model" in given or "config_files" in given:
            raise UsageError(
                "--recommend takes the model and its settings from --model_file; "
                "leave out --model and --config_files"
            )


def _print_results(result):
    from recbole.utils import dict2str

    print("best valid result:")
    print(dict2str(result["best_valid_result"] or {}))
    print("test result:")
    print(dict2str(result["test_result"] or {}))
    if result.get("model_file"):
        print(f"checkpoint: {result['model_file']}")
    if result.get("result_file"):
        print(f"result file: {result['result_file']}")
    if result.get("wall_seconds") is not None:
        minutes, seconds = divmod(round(result["wall_seconds"]), 60)
        print(f"wall time: {minutes} min {seconds:02d} s")


def _train(flags, params):
    from recbole_diffusion.quick_start import run_recbole_diffusion

    distributed = flags.get("nproc", 1) > 1 or flags.get("world_size", 0) > flags.get(
        "nproc", 1
    )
    if not distributed:
        return run_recbole_diffusion(
            model=flags.get("model"),
            dataset=flags.get("dataset"),
            config_file_list=flags.get("config_files"),
            cmd_args=params,
            resume_file=flags.get("resume"),
        )
    if flags.get("resume"):
        raise UsageError("--resume is not supported with --nproc")
    from recbole_diffusion.distributed import run_distributed

    return run_distributed(
        model=flags.get("model"),
        dataset=flags.get("dataset"),
        config_file_list=flags.get("config_files"),
        cmd_args=params,
        nproc=flags.get("nproc", 1),
        world_size=flags.get("world_size", -1),
        ip=flags.get("ip", "localhost"),
        port=flags.get("port"),
        offset=flags.get("offset", 0),
    )


def _tune(flags, params):
    from recbole_diffusion.tuning import run_tuning

    result = run_tuning(
        model=flags.get("model"),
        dataset=flags.get("dataset"),
        params_file=flags.get("params_file"),
        config_file_list=flags.get("config_files"),
        cmd_args=params,
        algo=flags.get("algo", "exhaustive"),
        max_evals=flags.get("max_evals"),
        early_stop=flags.get("early_stop"),
        output_file=flags.get("output_file"),
        tool=flags.get("tool", "hyperopt"),
        ray_cpus=flags.get("ray_cpus"),
        display_file=flags.get("display_file"),
    )
    from recbole.utils import dict2str

    finished = [t for t in result["trials"] if not t.get("error")]
    print(f"trials: {len(result['trials'])} ({len(finished)} finished)")
    if result["best_params"] is None:
        print("no trial finished")
    else:
        print("best params:", result["best_params"])
        print("best valid result:")
        print(dict2str(result["best_valid_result"]))
        print("test result of the best params:")
        print(dict2str(result["best_test_result"]))
    print(f"all trials: {result['output_file']}")
    print(f"as JSON and CSV: {result['json_file']}, {result['csv_file']}")
    print(f"summary: {result['summary_file']}")
    if result["display_file"]:
        print(f"figure: {result['display_file']}")
    return 0 if finished else 1


def _recommend(flags, params):
    from recbole_diffusion.recommend import read_user_ids, recommend, write_csv

    result = recommend(
        flags["model_file"],
        read_user_ids(flags["user_ids"]),
        topk=flags.get("topk", 10),
        dataset=flags.get("dataset"),
        config_dict=_typed(params),
        include_seen=flags.get("include_seen", False),
    )
    for warning in result["warnings"]:
        print(warning, file=sys.stderr)
    print(
        f"top-{len(result['users'][0]['items'])} items of {result['model']} "
        f"({result['dataset']}):"
    )
    for entry in result["users"]:
        print(f"{entry['user']}: {' '.join(entry['items'])}")
    if flags.get("output_file"):
        write_csv(flags["output_file"], result)
        print(f"written: {flags['output_file']}")
    return 0


def _typed(params):
    """``--key=value`` strings as RecBole reads them (numbers, lists, booleans)."""
    import ast

    typed = {}
    for key, value in params.items():
        try:
            typed[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            typed[key] = value
    return typed


def version_line():
    """This package's version and those of the libraries it runs on, read
    from the installed metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    from recbole_diffusion import __version__

    parts = []
    for package in ("recbole", "torch"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} not installed")
    return f"recbole-diffusion {__version__} ({', '.join(parts)})"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        flags, params = parse_args(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if flags.get("help"):
        print(USAGE.format(prog=program_name()))
        return 0
    if flags.get("version"):
        print(version_line())
        return 0
    from recbole_diffusion.precheck import check_command_line
    from recbole_diffusion.utils import ConfigError

    try:
        check_command_line(flags, params)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from recbole_diffusion.trainer import CheckpointError, TrainingDivergedError

    try:
        if flags.get("tune"):
            return _tune(flags, params)
        if flags.get("recommend"):
            return _recommend(flags, params)
        result = _train(flags, params)
    except (ConfigError, CheckpointError, UsageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDivergedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        # A worker process of a multi-process run failed; its traceback has
        # been printed by torch.multiprocessing.
        if type(error).__module__.startswith("torch.multiprocessing"):
            print(f"error: a training process failed: {error}", file=sys.stderr)
            return 1
        raise
    if result is None:
        print(
            "training finished; results are printed by the machine that runs "
            "rank 0 (--offset=0)"
        )
        return 0
    _print_results(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
