"""ADRec's three training stages, run by one trainer.

1. Pre-training: the item embedding and the causal attention module (CAM)
   learn with cross-entropy at every position (a SASRec-like causal model
   without positional embedding), until validation stops improving. Skipped
   when ``pretrained_embedding`` names a saved stage-1 checkpoint or
   embedding, or when ``pretrain_epochs`` is 0.
2. Warm-up: ``warmup_epochs`` epochs of the full loss with the item embedding
   frozen: it gets no gradient and is left out of the optimizer, so weight
   decay cannot move it either.
3. Joint training: the full loss with everything trainable, until
   validation stops improving (at most ``epochs`` epochs).

Each stage starts from the best model of the one before, with a fresh
optimizer and, by default, a cosine annealing of the learning rate over the
stage's maximum number of epochs. Each stage keeps its best checkpoint in its
own file, ``<saved_model_file stem>-stage<k>.pth``; at the end
``saved_model_file`` names the final best (stage 2 or 3, whichever validated
better), which ``evaluate(load_best_model=True)`` loads.

Checkpoints also record the stage (plain values only), so
``resume_checkpoint`` continues the stage that was interrupted, or starts the
next one when the file is a finished stage's best.
"""

import os

import numpy as np
import torch
from recbole.utils import set_color

from recbole_diffusion.trainer.checkpoint import (
    CheckpointError,
    load_checkpoint,
)
from recbole_diffusion.trainer.trainer import Trainer
from recbole_diffusion.utils import ConfigError

__all__ = ["ADRecTrainer"]

STAGE_NAMES = {
    1: "pre-training (CE on the causal attention module)",
    2: "warm-up (full loss, item embedding frozen)",
    3: "joint training (full loss)",
}
# Stages whose best model may be the final one (stage 1 is not a diffusion model).
FINAL_STAGES = (2, 3)
# Parameters that stage 1 trains and ``pretrained_embedding`` may provide.
PRETRAINED_PREFIXES = ("item_embedding.", "embedding_norm.", "cam.")


class ADRecTrainer(Trainer):
    """Runs ADRec's pre-training, warm-up and joint-training stages in order.

    Attributes:
        stage (int): the stage being trained (or last trained).
        stage_files (dict[int, str]): each stage's best checkpoint.
        stage_scores (dict[int, float]): each finished stage's best valid score.
        stage_history (list[int]): the stages this trainer ran, in order.
    """

    def __init__(self, config, model):
        super().__init__(config, model)
        self.stage_epochs = {
            1: config["pretrain_epochs"],
            2: config["warmup_epochs"],
            3: config["epochs"],
        }
        self.pretrained_embedding = config["pretrained_embedding"]
        stem, extension = os.path.splitext(self.saved_model_file)
        self.stage_files = {
            stage: f"{stem}-stage{stage}{extension}" for stage in self.stage_epochs
        }
        self.stage_scores = {}
        self.stage_results = {}
        self.stage_history = []
        self.stage = None
        self._next_stage = None  # set by resume_checkpoint
        self._resumed_stage = None  # a stage resumed part-way
        self._stage_completed = False
        self._best_state = None
        self._best_epoch = -1
        self._stage_best_states = {}

    # ------------------------------------------------------------------ #
    # stage set-up
    # ------------------------------------------------------------------ #
    def _worst_score(self):
        return -np.inf if self.valid_metric_bigger else np.inf

    def _begin_stage(self, stage):
        """Set the model, optimizer, scheduler and counters up for ``stage``."""
        self.stage = stage
        self.model.stage = stage
        # Frozen in stage 2: no gradient, and not in the optimizer, so weight
        # decay cannot move it either.
        self.model.item_embedding.weight.requires_grad_(stage != 2)
        # No gradient carried over from the stage before: a stale one on the
        # frozen embedding would still count in clip_grad_norm.
        self.model.zero_grad(set_to_none=True)
        if stage == 1:
            # Only what stage 1 trains: under DDP the other parameters get
            # zero (not missing) gradients, and Adam's weight decay would
            # then shrink the untrained ADM.
            parameters = [
                p
                for name, p in self.model.named_parameters()
                if name.startswith(PRETRAINED_PREFIXES)
            ]
        else:
            parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer(params=parameters)
        self.scheduler = self._build_scheduler(self.stage_epochs[stage])
        self.start_epoch = 0
        self.cur_step = 0
        self.best_valid_score = self._worst_score()
        self.best_valid_result = None
        self._best_state = None
        self._best_epoch = -1
        self._stage_completed = False
        self.saved_model_file = self.stage_files[stage]

    def _load_pretrained(self, path):
        """Load the embedding (and CAM, from a checkpoint) saved at ``path``.

        ``path`` holds a checkpoint of this plugin (its item embedding,
        embedding LayerNorm and CAM are loaded), a state dict, or a bare
        [n_items, hidden_size] tensor (the embedding only). Read with
        ``weights_only=True``.
        """
        payload = load_checkpoint(path, map_location=self.device)
        if isinstance(payload, torch.Tensor):
            parts = {"item_embedding.weight": payload}
        elif isinstance(payload, dict):
            state = payload.get("state_dict", payload)
            parts = {
                key: value
                for key, value in state.items()
                if isinstance(key, str) and key.startswith(PRETRAINED_PREFIXES)
            }
        else:
            parts = {}
        if "item_embedding.weight" not in parts:
            raise CheckpointError(
                f"pretrained_embedding '{path}' holds no item embedding: give a "
                "stage-1 checkpoint of ADRec or a saved [n_items, hidden_size] tensor."
            )
        own = self.model.state_dict()
        for key, value in parts.items():
            if key not in own or own[key].shape != value.shape:
                expected = tuple(own[key].shape) if key in own else "no such parameter"
                raise ConfigError(
                    f"pretrained_embedding '{path}': {key} has shape "
                    f"{tuple(value.shape)}, the model needs {expected}. It was "
                    "trained on another dataset or with another hidden_size."
                )
        self.model.load_state_dict(parts, strict=False)
        self.logger.info(
            set_color("ADRec stage 1 skipped", "yellow")
            + f": loaded {', '.join(sorted({k.split('.')[0] for k in parts}))} "
            f"from {path}"
        )

    # ------------------------------------------------------------------ #
    # training loop
    # ------------------------------------------------------------------ #
    def fit(
        self,
        train_data,
        valid_data=None,
        verbose=True,
        saved=True,
        show_progress=False,
        callback_fn=None,
    ):
        """Run the stages from the first one due; return the final best.

        Returns:
            (float, dict): the best valid score and result of the final model.
        """
        if self._next_stage is not None:
            first_stage = self._next_stage
        elif self.pretrained_embedding:
            self._load_pretrained(self.pretrained_embedding)
            first_stage = 2
        else:
            first_stage = 1
        for stage in range(first_stage, len(STAGE_NAMES) + 1):
            if self.stage_epochs[stage] == 0:
                self.logger.info(
                    set_color(f"ADRec stage {stage}/3 skipped", "yellow")
                    + f": {STAGE_NAMES[stage]} has 0 epochs"
                )
                continue
            self._run_stage(
                stage,
                train_data,
                valid_data,
                verbose,
                saved,
                show_progress,
                callback_fn,
            )
        self._next_stage = None
        return self._finish(saved)

    def _run_stage(
        self, stage, train_data, valid_data, verbose, saved, show_progress, callback_fn
    ):
        if self._resumed_stage == stage:
            self._resumed_stage = None  # resume_checkpoint has set it up
        else:
            self._begin_stage(stage)
        epochs = self.stage_epochs[stage]
        self.epochs = epochs
        self.eval_step = min(self.config["eval_step"], epochs)
        # Warm-up runs all its epochs; the other stages stop early.
        self.stopping_step = epochs if stage == 2 else self.config["stopping_step"]
        self.logger.info(
            set_color(f"ADRec stage {stage}/3", "yellow")
            + f": {STAGE_NAMES[stage]}, epochs {self.start_epoch}..{epochs - 1}, "
            f"best checkpoint in {self.saved_model_file}"
        )
        super().fit(
            train_data,
            valid_data,
            verbose=verbose,
            saved=saved,
            show_progress=show_progress,
            callback_fn=callback_fn,
        )
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
            self.stage_scores[stage] = float(self.best_valid_score)
            self.stage_results[stage] = self.best_valid_result
        if stage in FINAL_STAGES:
            self._stage_best_states[stage] = self._best_state
        self._stage_completed = True
        if saved:
            # The stage's best, marked finished: resuming from it starts the
            # next stage.
            self._save_checkpoint(self._best_epoch, verbose=False)
        self.stage_history.append(stage)
        self.logger.info(
            set_color(f"ADRec stage {stage}/3 finished", "yellow")
            + f": best valid score {self.best_valid_score:.6f} at epoch "
            f"{self._best_epoch}"
        )

    def _finish(self, saved):
        """Make the final best model current and ``saved_model_file`` name it."""
        candidates = [s for s in FINAL_STAGES if s in self.stage_scores]
        if not candidates:  # no validation data: keep the last stage's model
            final = self.stage if self.stage is not None else 3
        else:
            pick = max if self.valid_metric_bigger else min
            # ties go to the later stage
            final = pick(reversed(candidates), key=lambda s: self.stage_scores[s])
            if final != self.stage:
                best_state = self._stage_best_states.get(final)
                if best_state is not None:
                    self.model.load_state_dict(best_state)
                else:  # resumed after that stage: its best is in its file
                    checkpoint = load_checkpoint(
                        self.stage_files[final], map_location=self.device
                    )
                    self._load_model_state(checkpoint, self.stage_files[final])
            self.best_valid_score = self.stage_scores[final]
            self.best_valid_result = self.stage_results.get(final)
        self.model.stage = final
        self.saved_model_file = self.stage_files[final]
        self.logger.info(
            set_color("ADRec final model", "yellow")
            + f": stage {final}"
            + (f", {self.saved_model_file}" if saved else "")
        )
        return self.best_valid_score, self.best_valid_result

    def _valid_epoch(self, valid_data, show_progress=False):
        score, result = super()._valid_epoch(valid_data, show_progress=show_progress)
        # the same test as RecBole's early_stopping, which saves on it
        if self.valid_metric_bigger:
            improved = score >= self.best_valid_score
        else:
            improved = score <= self.best_valid_score
        if improved:
            self._best_state = {
                key: value.detach().clone()
                for key, value in self.model.state_dict().items()
            }
            self._best_epoch = self._current_epoch
        return score, result

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        output = super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)
        return f"stage {self.stage} " + output

    # ------------------------------------------------------------------ #
    # checkpoints
    # ------------------------------------------------------------------ #
    def _checkpoint_state(self, epoch):
        state = super()._checkpoint_state(epoch)
        state.update(
            {
                "adrec_stage": self.stage,
                "stage_completed": self._stage_completed,
                "stage_files": {str(k): v for k, v in self.stage_files.items()},
                "stage_scores": {
                    str(k): float(v) for k, v in self.stage_scores.items()
                },
                # metrics are numpy floats: stored as plain floats
                "stage_results": {
                    str(k): {str(m): float(x) for m, x in (v or {}).items()}
                    for k, v in self.stage_results.items()
                },
            }
        )
        return state

    def resume_checkpoint(self, resume_file):
        """Resume from an ADRec stage checkpoint: the same stage, or the next.

        A finished stage's best checkpoint starts the next stage from its
        weights; a checkpoint written during a stage continues that stage
        from the epoch after it, with its optimizer and scheduler state.
        """
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        stage = checkpoint.get("adrec_stage")
        if stage not in STAGE_NAMES:
            raise CheckpointError(
                f"Checkpoint '{resume_file}' was not written by ADRecTrainer (it "
                "records no stage); it cannot be resumed as an ADRec run."
            )
        self._load_model_state(checkpoint, resume_file)
        self.stage_files.update(
            {int(k): v for k, v in checkpoint.get("stage_files", {}).items()}
        )
        # the stage goes on writing its best into the file it resumed from
        self.stage_files[stage] = resume_file
        self.stage_scores = {
            int(k): v for k, v in checkpoint.get("stage_scores", {}).items()
        }
        self.stage_results = {
            int(k): v for k, v in checkpoint.get("stage_results", {}).items()
        }
        if checkpoint.get("stage_completed"):
            self.stage = stage
            self._next_stage = stage + 1
            self._stage_best_states[stage] = {
                key: value.detach().clone()
                for key, value in self.model.state_dict().items()
            }
            self.logger.info(
                f"Checkpoint loaded: ADRec stage {stage} had finished. "
                f"Resume training with stage {stage + 1}."
            )
            return checkpoint
        self._begin_stage(stage)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self._load_scheduler_state(checkpoint)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        # The file holds the stage's best so far.
        self._best_state = {
            key: value.detach().clone()
            for key, value in self.model.state_dict().items()
        }
        self._best_epoch = checkpoint["epoch"]
        self._next_stage = stage
        self._resumed_stage = stage
        self.logger.info(
            f"Checkpoint loaded: resume ADRec stage {stage} from epoch "
            f"{self.start_epoch}."
        )
        return checkpoint
