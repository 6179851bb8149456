"""The run command: ``python run_recbole_diffusion.py --model=ADRec --dataset=ml-1m``.

Flags of the command itself are listed in ``USAGE``; every other
``--key=value`` is a RecBole parameter with the highest precedence. A usage
error or an invalid configuration exits with status 2 and a one-line reason;
a diverged training exits with status 1.
"""

import sys

USAGE = """usage: run_recbole_diffusion.py [--model=NAME] [--dataset=NAME]
                               [--config_files="a.yaml b.yaml"] [--resume=FILE]
                               [--key=value ...]

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
"""

# Flags the command consumes itself; everything else is a config parameter.
COMMAND_FLAGS = {"model", "dataset", "config_files", "resume"}


class UsageError(Exception):
    """A malformed command line."""


def parse_args(argv):
    """Split ``argv`` into the command's flags and ``--key=value`` parameters."""
    flags, params = {}, {}
    for arg in argv:
        if arg in ("-h", "--help"):
            flags["help"] = True
            continue
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
    return flags, params


def _print_results(result):
    from recbole.utils import dict2str

    print("best valid result:")
    print(dict2str(result["best_valid_result"] or {}))
    print("test result:")
    print(dict2str(result["test_result"] or {}))
    if result.get("model_file"):
        print(f"checkpoint: {result['model_file']}")


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

    from recbole_diffusion.quick_start import run_recbole_diffusion
    from recbole_diffusion.trainer import CheckpointError, TrainingDivergedError
    from recbole_diffusion.utils import ConfigError

    try:
        result = run_recbole_diffusion(
            model=flags.get("model"),
            dataset=flags.get("dataset"),
            config_file_list=flags.get("config_files"),
            cmd_args=params,
            resume_file=flags.get("resume"),
        )
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDivergedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    _print_results(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
