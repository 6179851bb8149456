"""Trainers: RecBole's, with safe checkpoints, plus model-specific ones."""

from recbole_diffusion.trainer.adrec_trainer import ADRecTrainer
from recbole_diffusion.trainer.checkpoint import (
    CheckpointError,
    load_checkpoint,
    plain_config,
)
from recbole_diffusion.trainer.distributed import (
    DistributedCollector,
    DistributedTrainerMixin,
)
from recbole_diffusion.trainer.trainer import (
    SafeCheckpointMixin,
    Trainer,
    TrainingDivergedError,
    make_safe,
)

__all__ = [
    "ADRecTrainer",
    "CheckpointError",
    "DistributedCollector",
    "DistributedTrainerMixin",
    "SafeCheckpointMixin",
    "Trainer",
    "TrainingDivergedError",
    "load_checkpoint",
    "make_safe",
    "plain_config",
]
