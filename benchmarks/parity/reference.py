"""The reference codes: where to get each, and how to import it on a CPU.

Each reference is a checkout of the authors' repository at a pinned commit.
Its modules are imported from that checkout at run time (its source folder
put first on ``sys.path``); nothing of it is copied into this project. The
few changes it needs to import and run on a CPU with today's libraries are
applied at run time, in memory, and listed in :data:`REFERENCES` so that the
page can state them.
"""

import importlib
import subprocess
import sys
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "REFERENCES",
    "Reference",
    "checkout_commit",
    "checkout_command",
    "import_reference",
]


@dataclass(frozen=True)
class Reference:
    """One reference repository, pinned."""

    repository: str
    commit: str
    source: str  # folder of the Python modules inside the checkout
    modules: tuple  # module names it defines (purged before and after use)
    patches: tuple = field(default=())  # run-time changes, in words
    stubs: tuple = field(default=())  # third-party modules replaced by empty stubs


_NUMPY_ALIAS = (
    "numpy >= 1.24 has no `np.int`: `np.int = int` is set before the import "
    "(`step_sample.py`'s loss-aware sampler allocates with `dtype=np.int`)"
)
_CPU_ARGS = (
    "run on the CPU: the model is built from an `argparse.Namespace` made here "
    "(its `main.py`, which parses the command line at import and defaults to "
    "`cuda`, is never imported) and stays on `cpu`"
)
_SAMPLER = (
    "its timestep sampler (`schedule_sampler.sample`, numpy's `np.random.choice`) "
    "is replaced on the instance by one returning the injected steps"
)

REFERENCES = {
    "DiffuRec": Reference(
        repository="https://github.com/WHUIR/DiffuRec",
        commit="f6f70c9d78477591742c71c9ed83e5f1269530e8",
        source="src",
        modules=("diffurec", "model", "step_sample", "utils", "trainer"),
        patches=(_NUMPY_ALIAS, _CPU_ARGS, _SAMPLER),
    ),
    "DiffuRecSys": Reference(
        repository="https://github.com/shararezr/DiffuRecSys",
        commit="746866d4686419a7c4e4c05c8f1e3a1a1d0429bf",
        source=".",
        modules=("diffurec", "model", "step_sample", "tools", "training"),
        patches=(
            _CPU_ARGS,
            _SAMPLER,
            "for the chain and loss checks its approximator "
            "(`diffu.xstart_model.forward`) is replaced on the instance by ours "
            "(see the note of those records)",
        ),
    ),
    "CDDRec": Reference(
        repository="https://github.com/YuWang-1024/CDDRec",
        commit="edfe0fffea94bbe6da279c210ee1ac16054887b3",
        source=".",
        modules=("models", "modules", "utils", "datasets", "trainers"),
        patches=(
            "run on the CPU: `args.cuda_condition = False` (its model then "
            "builds its tables on the CPU, as `torch.cuda.is_available()` is "
            "False there); `main.py` is never imported",
            "for the decoder check the output projection of its decoder's "
            "cross-attention (`decoder.multihead_attn.out_proj`) is set to zero "
            "on the instance (see the note of that record)",
        ),
    ),
    "ADRec": Reference(
        repository="https://github.com/Nemo-1024/ADRec",
        commit="0a30ef764cd85efa44f884a387198e9bf28c7d4c",
        source="src",
        modules=(
            "adrec",
            "common",
            "diffurec",
            "dreamrec",
            "model",
            "step_sample",
            "utils",
            "metrics",
            "trainer",
            "pcgrad",
            "sasrec",
            "logger",
        ),
        patches=(
            "`einops` and `torchtune` are imported by modules the ADRec path "
            "does not use (`einops.rearrange` in an unused class of "
            "`common.py`, `pack`/`unpack` in `utils.py`, `torchtune` in "
            "`diffurec.py`/`dreamrec.py`): empty stub modules stand in for "
            "them during the import, and raise if called",
            _CPU_ARGS + " (`logger.py`, which parses `config.yaml`, is never imported)",
            _SAMPLER,
        ),
        stubs=(
            ("einops", ("rearrange", "pack", "unpack")),
            ("torchtune", ()),
            ("torchtune.modules", ("RotaryPositionalEmbeddings",)),
        ),
    ),
}


def checkout_command(model, directory="/tmp/refs/{model}"):
    """The shell commands that make the reference checkout of ``model``."""
    reference = REFERENCES[model]
    directory = directory.format(model=model)
    return (
        f"git clone {reference.repository} {directory} && "
        f"git -C {directory} checkout {reference.commit}"
    )


def checkout_commit(reference_dir):
    """The commit checked out in ``reference_dir``, or None if it is no git checkout."""
    try:
        result = subprocess.run(
            ["git", "-C", str(reference_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip() or None


def _purge(names):
    for name in names:
        sys.modules.pop(name, None)


def _stub(name, attributes):
    module = types.ModuleType(name)

    def unavailable(*args, **kwargs):
        raise RuntimeError(f"{name} is a stub in the parity check")

    for attribute in attributes:
        setattr(module, attribute, unavailable)
    return module


@contextmanager
def _stubs(stubs):
    """Stand-in modules for ``stubs`` that are not installed, for the block only."""
    added = []
    for name, attributes in stubs:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            sys.modules[name] = _stub(name, attributes)
            added.append(name)
    try:
        yield
    finally:
        _purge(added)


def import_reference(model, reference_dir, names):
    """Import ``names`` (module names) of ``model``'s reference from its checkout.

    Returns a dict name -> module. The checkout's source folder goes first on
    ``sys.path`` for the import only; modules of the same names imported
    before (another reference) are dropped first, so two references never mix.

    Raises:
        FileNotFoundError: ``reference_dir`` lacks one of the modules.
    """
    reference = REFERENCES[model]
    source = Path(reference_dir) / reference.source
    missing = [name for name in names if not (source / f"{name}.py").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{source} has no {', '.join(n + '.py' for n in missing)}: give "
            f"--reference-dir a checkout of {reference.repository} at "
            f"{reference.commit} ({checkout_command(model)})."
        )
    if not hasattr(np, "int"):
        np.int = int  # the reference's step_sample.py predates numpy 1.24
    _purge(reference.modules)
    sys.path.insert(0, str(source))
    try:
        with _stubs(reference.stubs):
            return {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(str(source))
