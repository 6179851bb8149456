"""Multi-process training with torch DDP, on CPUs (gloo) as well as GPUs.

RecBole 1.2.1 wraps the model in ``DistributedDataParallel`` and shards every
data loader with a ``DistributedSampler``, but three things go wrong:

- ``DistributedDataParallel(model, device_ids=[local_rank])`` refuses a model
  on the CPU, so gloo runs fail before the first batch;
- evaluation loaders use ``DistributedSampler(drop_last=False)``, which pads
  the shards by repeating the first rows: with 943 test users on 2 processes
  one user is evaluated twice;
- ``Trainer.evaluate`` weights each process's metrics by ``len(batched_data)``,
  the length of a 4-tuple, i.e. by the number of batches, not of users, and
  averages values already rounded to ``metric_decimal_place``.

:class:`DistributedTrainerMixin` fixes all three. Evaluation shards are
disjoint (rank ``r`` takes rows ``r, r + W, r + 2W ...``); after the loop the
per-row evaluation data (``rec.topk``, ``rec.items`` ...) of every process is
gathered and the metrics are computed once over all rows, so a run on ``W``
processes reports exactly the metrics of a one-process run on the same model,
for every metric, not only means. Training shards keep RecBole's padding: every
process must run the same number of steps, as gradients are all-reduced at
each step.

Only rank 0 writes checkpoints; every process uses rank 0's file name and waits
for the file before loading it.
"""

import inspect

import torch
import torch.distributed as dist
from recbole.evaluator import Collector

__all__ = ["DistributedCollector", "DistributedTrainerMixin", "UnpaddedShardSampler"]

# Collector entries with one row per evaluated user (or interaction).
PER_ROW_KEYS = ("rec.topk", "rec.meanrank", "rec.score", "rec.items", "data.label")


def is_distributed(config):
    return not config["single_spec"]


class UnpaddedShardSampler(torch.utils.data.Sampler):
    """Rows ``rank, rank + world_size, ...``: disjoint shards that cover every row once."""

    def __init__(self, num_rows, rank, world_size):
        self.num_rows = num_rows
        self.rank = rank
        self.world_size = world_size

    def __iter__(self):
        return iter(range(self.rank, self.num_rows, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.num_rows, self.world_size))


def shard_without_padding(eval_data):
    """Replace the padded ``DistributedSampler`` of an evaluation loader, in place.

    ``DataLoader`` forbids re-assigning its ``sampler``; the batch sampler it
    iterates holds its own reference, which is the one replaced here.
    """
    batch_sampler = eval_data.batch_sampler
    current = getattr(batch_sampler, "sampler", None)
    if not isinstance(current, torch.utils.data.DistributedSampler):
        return eval_data
    batch_sampler.sampler = UnpaddedShardSampler(
        eval_data.sample_size, current.rank, current.num_replicas
    )
    return eval_data


def _all_gather_rows(tensor, device):
    """Concatenate a tensor's rows from every process (shards may differ in size)."""
    world_size = dist.get_world_size()
    local = tensor.to(device)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], device=device))
    sizes = [int(size.item()) for size in sizes]
    padded_shape = (max(sizes),) + tuple(local.shape[1:])
    padded = torch.zeros(padded_shape, dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    gathered = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:size] for part, size in zip(gathered, sizes)]).cpu()


class DistributedCollector(Collector):
    """RecBole's collector that also records which users were evaluated.

    Under DDP, :meth:`get_data_struct` returns the rows of every process, so
    the evaluator computes global metrics. ``evaluated_users`` holds the
    internal user ids of the last evaluation, over all processes.
    """

    def __init__(self, config):
        super().__init__(config)
        self.uid_field = config["USER_ID_FIELD"]
        self._users = []
        self.evaluated_users = torch.zeros(0, dtype=torch.long)

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if self.uid_field in interaction:
            self._users.append(interaction[self.uid_field].detach().cpu().long())

    def get_data_struct(self):
        struct = super().get_data_struct()
        users = (
            torch.cat(self._users) if self._users else torch.zeros(0, dtype=torch.long)
        )
        self._users = []
        if is_distributed(self.config) and dist.is_initialized():
            device = self.config["device"]
            for key in PER_ROW_KEYS:
                if key in struct:
                    struct[key] = _all_gather_rows(struct[key], device)
            users = _all_gather_rows(users, device)
        self.evaluated_users = users
        return struct


class DistributedTrainerMixin:
    """DDP set-up and exact evaluation for RecBole trainers; see the module docstring.

    In a one-process run it only records the evaluated users.
    """

    def __init__(self, config, model):
        distributed = is_distributed(config)
        if distributed:
            # RecBole's AbstractTrainer builds a DDP wrapper that fails on CPUs;
            # let it skip that step, then wrap the model here.
            config["single_spec"] = True
        try:
            super().__init__(config, model)
        finally:
            config["single_spec"] = not distributed
        self.eval_collector = DistributedCollector(config)
        if distributed:
            self._wrap_distributed(config)

    def _wrap_distributed(self, config):
        from torch.nn.parallel import DistributedDataParallel

        on_gpu = self.device.type == "cuda"
        if on_gpu:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        has_running_stats = any(
            isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            for module in self.model.modules()
        )
        # Buffers are synchronised from rank 0 once here. Re-broadcasting them
        # at every step is only needed for running statistics (batch norm);
        # the plugin's models hold large constant buffers (DuoRec's
        # same-target index) that would otherwise be copied at every step.
        options = inspect.signature(DistributedDataParallel.__init__).parameters
        sync_key = (
            "forward_sync_buffers"  # newer torch; still syncs once at init
            if "forward_sync_buffers" in options
            else "broadcast_buffers"
        )
        self.distributed_model = DistributedDataParallel(
            self.model,
            device_ids=[config["local_rank"]] if on_gpu else None,
            **{sync_key: has_running_stats},
        )
        self._wrapped_trainable = self._trainable_flags()
        # Every process must write to and read from rank 0's checkpoint file,
        # whose name holds rank 0's start time.
        names = [self.saved_model_file]
        dist.broadcast_object_list(names, src=0)
        self.saved_model_file = names[0]

    def _trainable_flags(self):
        return tuple(p.requires_grad for p in self.model.parameters())

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        # DDP reduces the gradients of the parameters that required them when
        # it was built; a trainer that freezes some later (ADRec's warm-up
        # stage) needs a new wrapper, or the reduction waits forever.
        if is_distributed(self.config) and (
            self._trainable_flags() != self._wrapped_trainable
        ):
            self._wrap_distributed(self.config)
        return super()._train_epoch(
            train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress
        )

    def evaluate(
        self, eval_data, load_best_model=True, model_file=None, show_progress=False
    ):
        if eval_data and is_distributed(self.config):
            shard_without_padding(eval_data)
            if load_best_model:
                dist.barrier()  # rank 0 has finished writing the checkpoint
        return super().evaluate(
            eval_data,
            load_best_model=load_best_model,
            model_file=model_file,
            show_progress=show_progress,
        )

    def _map_reduce(self, result, num_sample):
        # The collector gathered every process's rows: ``result`` is already
        # the metric over all evaluated users, identical on every process.
        return result
