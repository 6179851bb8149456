"""RecBole's trainer with safe checkpoints, a clear stop on a diverged loss and
a per-epoch learning-rate schedule."""

import os
import secrets
import time
from collections import Counter

import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import set_color

from recbole_diffusion.allocator import keep_freed_memory
from recbole_diffusion.trainer.checkpoint import (
    CheckpointError,
    load_checkpoint,
    plain_config,
)
from recbole_diffusion.trainer.distributed import DistributedTrainerMixin
from recbole_diffusion.utils import config_value

__all__ = [
    "TrainingModeMixin",
    "LearningRateScheduleMixin",
    "SafeCheckpointMixin",
    "TimeEstimateMixin",
    "Trainer",
    "TrainingDivergedError",
    "make_safe",
]


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class TrainingModeMixin:
    """Process-wide settings that make training faster and change no result.

    - torch's autograd anomaly detection from ``detect_anomaly`` (off).
      RecBole's ``sine.py`` turns it on for the whole process when RecBole's
      sequential models are imported; left on, it checks every gradient for
      NaN and records a traceback per forward operation (SASRec+ and DuoRec
      trained 1.8x slower). ``detect_anomaly: True`` turns it back on for
      debugging a NaN in the backward pass.
    - glibc's allocator keeps freed memory (``malloc_keep_memory``, on; see
      :mod:`recbole_diffusion.allocator`).
    - Adam and AdamW run torch's fused kernel (``fused_optimizer``, on): one
      kernel per parameter instead of about ten small operations, which was
      a fifth of an ADRec step (about 70 small tensors). The update is the
      same formula; the floats may differ in the last bits.
    """

    _FUSED_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)

    def _build_optimizer(self, **kwargs):
        optimizer = super()._build_optimizer(**kwargs)
        if (
            config_value(self.config, "fused_optimizer", True)
            and type(optimizer) in self._FUSED_OPTIMIZERS
        ):
            parameters = [p for g in optimizer.param_groups for p in g["params"]]
            devices = {p.device.type for p in parameters}
            if (
                parameters
                and devices <= {"cpu", "cuda"}
                and len(devices) == 1
                and all(p.is_floating_point() for p in parameters)
            ):
                for group in optimizer.param_groups:
                    group["fused"] = True
                    group["foreach"] = None
        return optimizer

    def __init__(self, config, model):
        super().__init__(config, model)
        torch.autograd.set_detect_anomaly(
            bool(config_value(config, "detect_anomaly", False))
        )
        if config_value(config, "malloc_keep_memory", True):
            keep_freed_memory()


class SafeCheckpointMixin:
    """Checkpoint handling that works on torch >= 2.6 without executing code.

    Mixed into any RecBole trainer: checkpoints hold the model and optimizer
    state and the configuration as a plain dict; every load goes through
    :func:`load_checkpoint` (``weights_only=True``).
    """

    _current_epoch = 0

    def __init__(self, config, model):
        super().__init__(config, model)
        # RecBole names the checkpoint after the start time to the second, so
        # two runs started in the same second (tuning trials, parallel jobs)
        # would overwrite each other's best model; a random suffix keeps each
        # run's file its own.
        stem, extension = os.path.splitext(self.saved_model_file)
        self.saved_model_file = f"{stem}-{secrets.token_hex(3)}{extension}"

    def _checkpoint_state(self, epoch):
        return {
            "config": plain_config(self.config),
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not self.config["single_spec"] and self.config["local_rank"] != 0:
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = self._checkpoint_state(epoch)
        # Write then rename, so an interruption never leaves a half-written
        # file in place of the last good checkpoint.
        partial_file = saved_model_file + ".partial"
        torch.save(state, partial_file)
        os.replace(partial_file, saved_model_file)
        if verbose:
            self.logger.info(
                set_color("Saving current", "blue") + f": {saved_model_file}"
            )

    def _load_model_state(self, checkpoint, checkpoint_file):
        stored = checkpoint.get("config", {})
        stored_model = stored.get("model") if isinstance(stored, dict) else None
        if stored_model and stored_model.lower() != self.config["model"].lower():
            raise CheckpointError(
                f"Checkpoint '{checkpoint_file}' holds a {stored_model} model, "
                f"not {self.config['model']}."
            )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))

    def resume_checkpoint(self, resume_file):
        """Resume training from a checkpoint written by this plugin."""
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        self.saved_model_file = resume_file
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self._load_model_state(checkpoint, resume_file)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(
            f"Checkpoint loaded. Resume training from epoch {self.start_epoch}"
        )
        return checkpoint

    @torch.no_grad()
    def evaluate(
        self, eval_data, load_best_model=True, model_file=None, show_progress=False
    ):
        if eval_data and load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            self._load_model_state(checkpoint, checkpoint_file)
            self.logger.info(
                f"Loading model structure and parameters from {checkpoint_file}"
            )
        return super().evaluate(
            eval_data, load_best_model=False, show_progress=show_progress
        )

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._current_epoch = epoch_idx
        return super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress
        )

    def _check_nan(self, loss):
        if torch.isfinite(loss).all():
            return
        if os.path.isfile(self.saved_model_file):
            kept = f"The last good checkpoint is kept at {self.saved_model_file}."
        else:
            kept = "No checkpoint had been saved yet."
        raise TrainingDivergedError(
            f"Training stopped: the loss of {self.config['model']} became "
            f"{loss.item()} in epoch {self._current_epoch}. {kept} Lower "
            "learning_rate, set clip_grad_norm, or check the data."
        )


class TimeEstimateMixin:
    """Log how long the rest of a training run may take, after its first epoch.

    The first epoch's time (training and validation) times the epochs left in
    the budget is an upper bound: early stopping usually ends sooner. For
    ADRec each stage (its own ``fit`` budget) gets its own estimate.
    """

    _estimate_epoch_started = None

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        now = time.perf_counter()
        first_of_fit = epoch_idx == self.start_epoch
        if first_of_fit:
            self._estimate_epoch_started = now
        elif self._estimate_epoch_started is not None:
            seconds = now - self._estimate_epoch_started
            self._estimate_epoch_started = None
            left = self.epochs - epoch_idx
            self.logger.info(
                set_color("time estimate", "blue")
                + f": {seconds:.1f} s per epoch; at most {left} more epochs, "
                f"{_minutes(seconds * left)} (early stopping usually ends sooner)"
            )
        return super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress
        )


def _minutes(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


class LearningRateScheduleMixin:
    """A per-epoch learning-rate schedule, which RecBole's trainer lacks.

    ``lr_scheduler``: ``none`` (constant), ``cosine`` (annealing over the
    run's ``epochs``) or ``step`` (times ``lr_gamma`` at each epoch of
    ``lr_milestones``: DiffuRecSys's x0.1 from epoch 30). The scheduler steps
    after every training epoch; its state is saved in checkpoints and
    restored on resume.
    """

    scheduler = None

    def __init__(self, config, model):
        super().__init__(config, model)
        self.lr_scheduler = config_value(config, "lr_scheduler") or "none"
        self.scheduler = self._build_scheduler(self.epochs)

    def _build_scheduler(self, epochs):
        if self.lr_scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=max(epochs, 1)
            )
        if self.lr_scheduler == "step":
            return torch.optim.lr_scheduler.MultiStepLR(
                self.optimizer,
                milestones=list(self.config["lr_milestones"]),
                gamma=self.config["lr_gamma"],
            )
        return None

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        losses = super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress
        )
        if self.scheduler is not None:
            self.scheduler.step()
        return losses

    def _checkpoint_state(self, epoch):
        state = super()._checkpoint_state(epoch)
        state["scheduler"] = None
        if self.scheduler is not None:
            # MultiStepLR keeps its milestones in a Counter, which weights-only
            # loading refuses; a plain dict with the same int keys works.
            state["scheduler"] = {
                key: dict(value) if isinstance(value, Counter) else value
                for key, value in self.scheduler.state_dict().items()
            }
        return state

    def _load_scheduler_state(self, checkpoint):
        if self.scheduler is not None and checkpoint.get("scheduler"):
            self.scheduler.load_state_dict(checkpoint["scheduler"])

    def resume_checkpoint(self, resume_file):
        checkpoint = super().resume_checkpoint(resume_file)
        self._load_scheduler_state(checkpoint)
        return checkpoint


class Trainer(
    TrainingModeMixin,
    LearningRateScheduleMixin,
    TimeEstimateMixin,
    DistributedTrainerMixin,
    SafeCheckpointMixin,
    RecBoleTrainer,
):
    """The plugin's default trainer: RecBole's, with safe checkpoints, DDP fixes
    and a learning-rate schedule."""


_SAFE_CLASSES = {}


def make_safe(trainer_class):
    """Return ``trainer_class`` with :class:`TrainingModeMixin`, :class:`TimeEstimateMixin`,
    :class:`SafeCheckpointMixin` and :class:`DistributedTrainerMixin` mixed in (the DDP mixin first, so that it
    waits for rank 0's checkpoint before the checkpoint mixin loads it)."""
    mixins = tuple(
        mixin
        for mixin in (
            TrainingModeMixin,
            TimeEstimateMixin,
            DistributedTrainerMixin,
            SafeCheckpointMixin,
        )
        if not issubclass(trainer_class, mixin)
    )
    if not mixins:
        return trainer_class
    if trainer_class not in _SAFE_CLASSES:
        _SAFE_CLASSES[trainer_class] = type(
            trainer_class.__name__, (*mixins, trainer_class), {}
        )
    return _SAFE_CLASSES[trainer_class]
