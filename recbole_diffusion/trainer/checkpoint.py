"""Checkpoints that hold tensors and plain values only.

RecBole pickles its ``Config`` object into every checkpoint, so on
torch >= 2.6 (which loads with ``weights_only=True``) its own
``evaluate(load_best_model=True)``, ``resume_checkpoint`` and
``load_data_and_model`` fail, and loading with ``weights_only=False`` would
run whatever code a file contains. The plugin writes the configuration as a
plain dict instead, and reads every checkpoint with ``weights_only=True``.
"""

import enum
import pickle

import torch

__all__ = ["CheckpointError", "load_checkpoint", "plain_config"]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing or cannot be read safely."""


def to_plain(value):
    """Convert a configuration value to what ``weights_only`` loading accepts."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_plain(v) for v in value]
    return str(value)


def plain_config(config):
    """The parts of a ``Config`` needed to rebuild it, as plain values.

    ``external`` holds every value set by property files, the user's files,
    ``config_dict`` and the command line: with the model and dataset names it
    rebuilds the same configuration. ``final`` is the resolved configuration,
    kept for reference (dataset checks, reports).
    """
    return {
        "model": config["model"],
        "model_variant": config["model_variant"] or config["model"],
        "dataset": config["dataset"],
        "external": to_plain(config.external_config_dict),
        "final": to_plain(config.final_config_dict),
    }


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint with ``weights_only=True``; refuse anything else."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as error:
        raise CheckpointError(f"Checkpoint '{path}' does not exist.") from error
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as error:
        raise CheckpointError(
            f"Checkpoint '{path}' cannot be loaded safely: it holds Python objects "
            "beyond tensors and plain values (for example a checkpoint written by "
            "RecBole's own trainer, which pickles its Config), or it is damaged. "
            "Loading it would have to execute code from the file, which is refused. "
            "Retrain with recbole-diffusion, whose checkpoints load safely."
        ) from error
