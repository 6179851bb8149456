"""The run command: ``python run_recbole_diffusion.py --model=ADRec --dataset=ml-1m``.

Flags of the command itself are listed in ``USAGE``; every other
``--key=value`` is a RecBole parameter with the highest precedence. A usage
error or an invalid configuration exits with status 2 and a one-line reason;
a diverged training (or a failed worker process) exits with status 1.
"""

import sys

USAGE = """usage: run_recbole_diffusion.py [--model=NAME] [--dataset=NAME]
                               [--config_files="a.yaml b.yaml"] [--resume=FILE]
                               [--nproc=N [--world_size=W --ip=IP --port=P --offset=O]]
                               [--key=value ...]
       run_recbole_diffusion.py --tune [--params_file=FILE] [--algo=exhaustive]
                               [--max_evals=N] [--early_stop=N] [--output_file=FILE]
                               [--display_file=FILE]
                               [--tool=hyperopt|ray] [--ray_cpus=N] [--model=...]
                               [--key=value ...]
       run_recbole_diffusion.py --recommend --model_file=FILE --user_ids=ID,ID,...
                               [--topk=10] [--output_file=FILE.csv] [--dataset=NAME]
                               [--include_seen]

Trains NAME (default: the flagship model) on NAME (default: ml-100k), picks the
best epoch on validation and reports valid and test metrics.

  --model=NAME          a plugin model (ADRec, CDDRec, DiffuRec, DiffuRecSys,
                        DiffuRecSys-V1, DuoRec) or any RecBole model (SASRec ...)
  --dataset=NAME        ml-100k (bundled), amazon-beauty, amazon-toys, ml-1m, or
                        your own atomic files with --data_path=FOLDER
  --config_files=FILES  space-separated yaml files, lowest precedence first
  --resume=FILE         resume training from a checkpoint written by this plugin
  --key=value           any RecBole parameter, e.g. --epochs=5 --learning_rate=1e-3
  -h, --help            show this message

Multi-process training (torch DDP; backend nccl on GPUs, gloo on CPUs, or
--backend=gloo|nccl). Each process trains on 1/N of every batch; every test
user is evaluated exactly once; only rank 0 writes the checkpoint and prints:
  --nproc=N             processes on this machine (at most its GPUs, or CPU cores)
  --world_size=W        processes on all machines (default N)
  --ip=IP --port=P      address of the machine of rank 0 (default localhost and,
                        on one machine, a free port)
  --offset=O            rank of this machine's first process (default 0)

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

# Flags the command consumes itself; everything else is a config parameter.
COMMAND_FLAGS = {
    "model",
    "dataset",
    "config_files",
    "resume",
    # multi-process training
    "nproc",
    "world_size",
    "ip",
    "port",
    "offset",
    # tuning
    "tune",
    "params_file",
    "algo",
    "max_evals",
    "early_stop",
    "output_file",
    "tool",
    "ray_cpus",
    "display_file",
    # recommendations
    "recommend",
    "model_file",
    "user_ids",
    "include_seen",
}
# Flags that may be given without a value.
SWITCHES = {"tune", "recommend", "include_seen"}
INT_FLAGS = {
    "nproc",
    "world_size",
    "port",
    "offset",
    "max_evals",
    "early_stop",
    "ray_cpus",
    "topk",
}
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


def parse_args(argv):
    """Split ``argv`` into the command's flags and ``--key=value`` parameters."""
    flags, params = {}, {}
    for arg in argv:
        if arg in ("-h", "--help"):
            flags["help"] = True
            continue
        if arg.startswith("--") and arg[2:] in SWITCHES:
            arg += "=true"
        if not arg.startswith("--") or "=" not in arg:
            raise UsageError(
                f"cannot read '{arg}': every argument has the form --key=value"
            )
        key, value = arg[2:].split("=", 1)
        if not key:
            raise UsageError(f"cannot read '{arg}': the key is empty")
        target = flags if key in COMMAND_FLAGS else params
        if key in target and target[key] != value:
            raise UsageError(f"--{key} is given twice with different values")
        target[key] = value
    if "config_files" in flags:
        flags["config_files"] = flags["config_files"].split()
    for switch in SWITCHES & set(flags):
        value = flags[switch].lower()
        if value not in ("true", "1", "yes", "false", "0", "no"):
            raise UsageError(
                f"--{switch} takes no value (or true/false), got '{value}'"
            )
        flags[switch] = value in ("true", "1", "yes")
    # --topk is the recommendation count with --recommend, RecBole's metric
    # cut-offs otherwise.
    if flags.get("recommend") and "topk" in params:
        flags["topk"] = params.pop("topk")
    for key in INT_FLAGS & set(flags):
        try:
            flags[key] = int(flags[key])
        except ValueError:
            raise UsageError(f"--{key}={flags[key]} is not an integer") from None
    _check_modes(flags)
    return flags, params


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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        flags, params = parse_args(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if flags.get("help"):
        print(USAGE)
        return 0

    from recbole_diffusion.trainer import CheckpointError, TrainingDivergedError
    from recbole_diffusion.utils import ConfigError

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
