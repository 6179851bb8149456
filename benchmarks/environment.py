"""What a record says about where it ran: machine, libraries, memory, dataset."""

import os
import platform
import resource
import subprocess
import sys

from benchmarks.protocol import PROJECT_ROOT

__all__ = [
    "build_with_stats",
    "dataset_stats",
    "library_versions",
    "machine_info",
    "peak_memory",
    "sync",
    "to_plain",
]


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args):
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def library_versions():
    import numpy
    import recbole
    import torch

    import recbole_diffusion

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "recbole": recbole.__version__,
        "numpy": numpy.__version__,
        "recbole_diffusion": recbole_diffusion.__version__,
        "git_commit": _git("rev-parse", "--short=12", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


def machine_info(device=None):
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(terse=True),
        "gpu": None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if device is not None and str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_memory(device):
    """Peak memory of this process in MiB: GPU allocations on CUDA, else RSS."""
    import torch

    if device is not None and str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, "rss"


def build_with_stats(model, dataset, config_dict):
    """``build_pipeline`` that also returns the dataset's statistics.

    The statistics are taken when the dataset is created, before the split
    (a built sequential dataset holds the augmented rows, not the
    interactions): the plugin's ``create_dataset`` is wrapped for the call.
    """
    from recbole_diffusion import quick_start

    stats = {}
    original = quick_start.create_dataset

    def create_and_count(config):
        created = original(config)
        stats.update(dataset_stats(created))
        return created

    quick_start.create_dataset = create_and_count
    try:
        pieces = quick_start.build_pipeline(
            model=model, dataset=dataset, config_dict=config_dict
        )
    finally:
        quick_start.create_dataset = original
    return pieces, stats


def dataset_stats(dataset):
    """Users, items and interactions after RecBole's loading and filtering."""
    users = int(dataset.user_num) - 1  # id 0 is padding
    items = int(dataset.item_num) - 1
    inters = int(dataset.inter_num)
    return {
        "users": users,
        "items": items,
        "interactions": inters,
        "avg_length": inters / users if users else None,
        "density": inters / (users * items) if users and items else None,
    }


def to_plain(value):
    """A configuration value as JSON (torch devices, enums and tuples become plain)."""
    from recbole_diffusion.trainer.checkpoint import to_plain as plain

    value = plain(value)
    if isinstance(value, float) and value != value:
        return None
    return value
