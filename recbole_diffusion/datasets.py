"""Make the papers' datasets as RecBole atomic files from their public releases.

``amazon-beauty``, ``amazon-toys`` and ``ml-1m`` are the user sequences that
the DiffuRec, DiffuRecSys and CDDRec papers report on. They are released as
pickles in the DiffuRec repository (github.com/WHUIR/DiffuRec,
``datasets/data/{amazon_beauty,toys,ml-1m}/dataset.pkl``): a dict with
``train``, ``val`` and ``test``, each a dict of user id to a list of item ids in
chronological order (``val`` and ``test`` hold the last two items), plus the id
maps ``umap`` and ``smap``.

::

    python -m recbole_diffusion.datasets prepare amazon-beauty \
        --source=DiffuRec/datasets/data/amazon_beauty/dataset.pkl --output=datasets
    python -m recbole_diffusion.datasets sources      # the releases and checksums

writes ``datasets/amazon-beauty/amazon-beauty.inter``: one row per interaction,
users in the release's order, ``timestamp`` = the item's position in
train + val + test (the releases carry order, not clock time). The result is
byte for byte the file the benchmarks use; ``prepare`` says so when the
checksums match.

A pickle can run code when it is loaded. The releases are read with an
unpickler that builds only plain containers (dict, list, tuple, set), strings
and numbers and refuses every other object, so a tampered file is refused
before anything in it runs. This module imports neither torch nor RecBole.
"""

import argparse
import hashlib
import io
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

from recbole_diffusion.utils import ConfigError, _closest

__all__ = [
    "RELEASES",
    "UnsafePickleError",
    "atomic_text",
    "load_plain_pickle",
    "main",
    "prepare",
    "read_release",
]

HEADER = "user_id:token\titem_id:token\ttimestamp:float"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Release:
    """A public release of one dataset and the checksums that identify it."""

    path: str  # inside the DiffuRec repository
    source_sha256: str
    inter_sha256: str  # of the .inter file that prepare writes


REPOSITORY = "https://github.com/WHUIR/DiffuRec (commit f6f70c9)"
RELEASES = {
    "amazon-beauty": Release(
        "datasets/data/amazon_beauty/dataset.pkl",
        "1d5ba224ff02584bcde37d3dd9fd3191d440829e7fcb7fe42dcfd313dd2144cb",
        "20942a7c3549501a5388a091901ca50205f8bdad2caa8bb926b1282d9b181244",
    ),
    "amazon-toys": Release(
        "datasets/data/toys/dataset.pkl",
        "e6e8f7f188326a3370749055e2a736fbd16ac036f42fe051ebd8eb891ff7bd4a",
        "53907b43d57d201901cb9cb9aa62121f6cd89bbb6025188fc41d17f080ccefe2",
    ),
    "ml-1m": Release(
        "datasets/data/ml-1m/dataset.pkl",
        "24517f75352c088e6163b0f1a1d61932390c08d837e191e02d09d1d35dc63ea4",
        "5e8ad47cd2d93f1c375316458ebeda6f6b8c0f33433be6320d8bcc2a3568e2d7",
    ),
}


class UnsafePickleError(ConfigError):
    """A pickle that asks for an object other than plain containers and numbers."""


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, sets, strings and numbers; refuses the rest.

    Those types have opcodes of their own; everything else (a class, a
    function, ``__reduce__``) needs ``find_class``, which is where code
    execution starts, so refusing it there means no payload ever runs.
    """

    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        raise UnsafePickleError(
            f"{self.source}: refused, the pickle asks for the object {module}.{name}; "
            "only plain containers, strings and numbers are read (a pickle can run "
            "code). Use the release file itself."
        )

    def persistent_load(self, pid):
        raise UnsafePickleError(
            f"{self.source}: refused, the pickle refers to an external object; "
            "only plain containers, strings and numbers are read."
        )


def load_plain_pickle(path):
    """Load a pickle of plain data without ever running code from it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; give the release's dataset.pkl."
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"{path} is a folder; give the release's dataset.pkl in it."
        ) from None
    try:
        return _PlainUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # a truncated or foreign file: any unpickling error
        raise ConfigError(
            f"{path}: not a readable pickle ({type(error).__name__}: {error})."
        ) from None


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def read_release(path):
    """The release's sequences: ``{user: [item, ...]}`` in train + val + test order.

    Raises:
        ConfigError: the file is not a release (missing splits, other users in
            one split than in another, ids that are not integers).
        UnsafePickleError: the pickle asks for anything but plain data.
    """
    release = load_plain_pickle(path)
    if not isinstance(release, dict) or any(split not in release for split in SPLITS):
        found = sorted(release) if isinstance(release, dict) else type(release).__name__
        raise ConfigError(
            f"{path}: expected a dict with 'train', 'val' and 'test' "
            f"(user -> item list), found {found}."
        )
    splits = [release[split] for split in SPLITS]
    for split, users in zip(SPLITS, splits):
        if not isinstance(users, dict):
            raise ConfigError(f"{path}: '{split}' must map users to item lists.")
        for user, items in users.items():
            if not _is_int(user) or not isinstance(items, (list, tuple)):
                raise ConfigError(
                    f"{path}: '{split}' entry {user!r} must be an integer user id "
                    "with a list of item ids."
                )
            if not all(_is_int(item) for item in items):
                raise ConfigError(
                    f"{path}: '{split}' user {user}: item ids must be integers."
                )
    train, val, test = splits
    if not train:
        raise ConfigError(f"{path}: 'train' holds no users.")
    if set(train) != set(val) or set(train) != set(test):
        raise ConfigError(
            f"{path}: 'train', 'val' and 'test' must hold the same users "
            f"({len(train)}, {len(val)} and {len(test)} users)."
        )
    return {user: [*train[user], *val[user], *test[user]] for user in train}


def atomic_text(sequences):
    """The ``.inter`` file of ``sequences``; timestamp = position in the sequence."""
    lines = [HEADER]
    for user, items in sequences.items():
        lines.extend(
            f"{user}\t{item}\t{position}" for position, item in enumerate(items)
        )
    return "\n".join(lines) + "\n"


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def prepare(name, source, output_dir):
    """Write ``<output_dir>/<name>/<name>.inter`` from the release ``source``.

    Returns:
        tuple: the written path, and a sentence on how it compares with the
        published release (byte-identical, or not a known release).
    """
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"Dataset name {name!r} is invalid: use e.g. amazon-beauty.")
    source = Path(source)
    if source.is_dir():
        source = source / "dataset.pkl"
    text = atomic_text(read_release(source)).encode("utf-8")
    target = Path(output_dir) / name / f"{name}.inter"
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name first, so an interrupted run leaves no half file.
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(text)
    partial.replace(target)
    release = RELEASES.get(name)
    digest = _sha256(text)
    if release is None:
        verdict = (
            f"sha256 {digest} ({name} is not one of the known releases: "
            f"{', '.join(RELEASES)}).{_closest(name, list(RELEASES))}"
        )
    elif digest == release.inter_sha256:
        verdict = f"sha256 {digest}: byte for byte the benchmarks' {name}."
    elif _sha256(source.read_bytes()) != release.source_sha256:
        verdict = (
            f"sha256 {digest}: differs from the benchmarks' {name}, because the source "
            f"is not the published release ({release.path} of {REPOSITORY})."
        )
    else:
        verdict = f"sha256 {digest}: differs from the benchmarks' {name}."
    return target, verdict


def _sources_text():
    lines = [f"Releases in {REPOSITORY}:"]
    for name, release in RELEASES.items():
        lines += [
            f"  {name}: {release.path}",
            f"    source sha256 {release.source_sha256}",
            f"    {name}.inter sha256 {release.inter_sha256}",
        ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m recbole_diffusion.datasets",
        description="Make the papers' datasets as RecBole atomic files.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("prepare", help="write <output>/<name>/<name>.inter")
    make.add_argument("name", help=f"dataset name ({', '.join(RELEASES)} or your own)")
    make.add_argument("--source", required=True, help="the release's dataset.pkl")
    make.add_argument("--output", default="datasets", help="folder (default: datasets)")
    commands.add_parser("sources", help="list the releases and their checksums")
    args = parser.parse_args(argv)
    if args.command == "sources":
        print(_sources_text())
        return 0
    try:
        target, verdict = prepare(args.name, args.source, args.output)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    folder = target.parent.parent.resolve()
    print(f"wrote {target}: {verdict}")
    print(
        f"Train on it: python run_recbole_diffusion.py --dataset={args.name} "
        f"--data_path={folder}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
