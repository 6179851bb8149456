"""Train on several processes with torch DDP: ``--nproc=N`` of the run command.

As RecBole's ``run`` does, one process per rank is started with
``torch.multiprocessing.spawn``; each builds its configuration with
``local_rank``, ``world_size``, ``ip``, ``port``, ``offset`` and ``nproc``,
which makes :class:`recbole_diffusion.config.Config` join the process group
(backend ``nccl`` on GPUs, ``gloo`` on CPUs, or the ``backend`` key). The
trainer then wraps the model in ``DistributedDataParallel`` and evaluates every
user exactly once (:mod:`recbole_diffusion.trainer.distributed`).

One machine::

    python run_recbole_diffusion.py --model=DuoRec --nproc=2

Two machines with 4 processes each (ranks 0-3 on the first, 4-7 on the
second; the first machine's address and a free port on it)::

    # machine A                                 # machine B
    ... --nproc=4 --world_size=8 --offset=0 \\   ... --nproc=4 --world_size=8 --offset=4 \\
        --ip=10.0.0.1 --port=29500                  --ip=10.0.0.1 --port=29500

The results are printed by the process of rank 0 (the machine with
``--offset=0``); only it writes the checkpoint.

Batches: RecBole divides ``train_batch_size`` and ``eval_batch_size`` by
``world_size``, so the global batch is the configured one. Losses that use
in-batch negatives (DuoRec's InfoNCE) therefore see ``1 / world_size`` as many
negatives per step as in a one-process run.
"""

import os
import socket

from recbole_diffusion.config import build_config
from recbole_diffusion.utils import ConfigError

__all__ = [
    "available_processes",
    "check_nproc",
    "free_port",
    "run_distributed",
]


def _uses_gpu(config):
    import torch

    return torch.cuda.is_available() and bool(config["use_gpu"])


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_processes(config):
    """How many processes this machine can run: GPUs when used, else CPU cores."""
    if _uses_gpu(config):
        import torch

        return torch.cuda.device_count()
    return _cpu_count()


def check_nproc(nproc, config):
    """Refuse a process count this machine cannot run."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ConfigError(f"--nproc={nproc!r} is invalid: give a positive integer.")
    limit = available_processes(config)
    unit = "GPUs" if _uses_gpu(config) else "CPU cores"
    if nproc > limit:
        raise ConfigError(
            f"--nproc={nproc} is more than this machine allows: it has {limit} "
            f"{unit} available, so use --nproc={limit} or fewer (one process per "
            f"{'GPU' if unit == 'GPUs' else 'core'})."
        )


def free_port():
    """A TCP port that is free on this machine now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _plain_result(result):
    keep = (
        "best_valid_score",
        "valid_score_bigger",
        "best_valid_result",
        "test_result",
        "model_file",
        "test_users",
    )
    return {key: result.get(key) for key in keep}


def _worker(local_rank, run_kwargs, settings, threads, queue):
    import torch
    import torch.distributed as dist

    from recbole_diffusion.quick_start import run_recbole_diffusion

    # Processes share the machine's cores: without this each would start as
    # many threads as there are cores.
    torch.set_num_threads(threads)
    run_kwargs = dict(run_kwargs)
    config_dict = dict(run_kwargs.pop("config_dict") or {})
    config_dict.update(settings)
    config_dict["local_rank"] = local_rank
    try:
        result = run_recbole_diffusion(config_dict=config_dict, **run_kwargs)
        if local_rank + settings["offset"] == 0:
            queue.put(_plain_result(result))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    cmd_args=None,
    nproc=2,
    world_size=-1,
    ip="localhost",
    port=None,
    offset=0,
    backend=None,
    saved=True,
):
    """Train and test like :func:`run_recbole_diffusion`, on ``nproc`` processes.

    The configuration is built and checked once here, before any process is
    started, so a bad setting fails with a :class:`ConfigError` at once.

    Args:
        nproc (int): processes on this machine.
        world_size (int): processes on all machines; ``-1``: ``nproc``.
        ip (str), port (int): address of the rank-0 machine; a free port is
            chosen when ``port`` is ``None`` and all processes are local.
        offset (int): rank of this machine's first process.
        backend (str): ``gloo`` or ``nccl``; by default ``nccl`` on GPUs and
            ``gloo`` on CPUs.

    Returns:
        dict: rank 0's result (as :func:`run_recbole_diffusion`, without
        ``config``), or ``None`` on a machine that does not run rank 0.
    """
    import torch.multiprocessing as mp

    config = build_config(model, dataset, config_file_list, config_dict, cmd_args)
    check_nproc(nproc, config)
    world_size = nproc if world_size is None or world_size <= 0 else world_size
    if world_size < nproc + offset:
        raise ConfigError(
            f"world_size={world_size} is smaller than offset + nproc = "
            f"{offset + nproc}: world_size counts the processes of all machines."
        )
    if backend not in (None, "gloo", "nccl", "mpi"):
        raise ConfigError(f"backend={backend!r} is invalid: choose gloo or nccl.")
    if backend == "nccl" and not _uses_gpu(config):
        raise ConfigError("backend=nccl needs GPUs; use backend=gloo on CPUs.")
    if port is None:
        port = free_port() if world_size == nproc else 5678
    settings = {
        "nproc": nproc,
        "world_size": world_size,
        "ip": ip,
        "port": int(port),
        "offset": offset,
    }
    if backend:
        settings["backend"] = backend
    threads = 1 if _uses_gpu(config) else max(1, _cpu_count() // nproc)
    run_kwargs = {
        "model": model,
        "dataset": dataset,
        "config_file_list": config_file_list,
        "config_dict": config_dict,
        "cmd_args": cmd_args,
        "saved": saved,
    }
    # RecBole's processes each create these with a check-then-create
    # (``ensure_dir``): on a fresh machine two of them race and one fails.
    for folder in (os.path.join("log", config["model"]), config["checkpoint_dir"]):
        os.makedirs(folder, exist_ok=True)
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(
        _worker,
        args=(run_kwargs, settings, threads, queue),
        nprocs=nproc,
        join=True,
    )
    return None if queue.empty() else queue.get()
