"""A reference's own data, as RecBole atomic files with the same split.

Every reference code keeps, per user, a training sequence, one validation
target and one test target (leave-one-out). :class:`ReferenceData` holds that
in the reference's own item ids; :func:`write_atomic` writes it as a RecBole
``.inter`` file whose timestamps are the positions, so that RecBole's
leave-one-out split (``LS: valid_and_test``, time order) gives back exactly
the reference's training, validation and test targets. The files go to a
scratch folder (``benchmarks/work/parity``), never into the project.
"""

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ReferenceData", "recbole_split_config", "write_atomic"]


@dataclass
class ReferenceData:
    """Per user: training items, validation target, test target (reference ids)."""

    name: str  # the RecBole dataset name the files are written under
    train: list  # list of lists of item ids, oldest first
    valid: list  # one validation target per user
    test: list  # one test target per user
    n_items: int  # the reference's item count (ids 1 .. n_items - 1; 0 pads)
    source: str  # where it was read, relative to the reference checkout

    def __post_init__(self):
        if not len(self.train) == len(self.valid) == len(self.test):
            raise ValueError(
                f"{self.name}: {len(self.train)} training sequences, "
                f"{len(self.valid)} validation and {len(self.test)} test targets"
            )

    @property
    def n_users(self):
        return len(self.train)

    @property
    def n_interactions(self):
        return sum(len(items) for items in self.train) + 2 * self.n_users

    def sequences(self, keep_last=None):
        """Each user's full sequence; with ``keep_last``, only its last items."""
        for items, valid, test in zip(self.train, self.valid, self.test):
            sequence = list(items) + [valid, test]
            yield sequence[-keep_last:] if keep_last else sequence


def write_atomic(data, folder, keep_last=None):
    """Write ``data`` as ``folder/<name>/<name>.inter``; return ``folder``.

    ``keep_last`` keeps only each user's last items (for references that train
    on the last ``L + 1`` training items only: ``L + 3`` keeps those and the
    two evaluation targets). Users are numbered from 1 in the reference's
    order; items keep the reference's ids as tokens.

    Raises:
        ValueError: a user has fewer than 2 training items: RecBole's
            leave-one-out would give that user a test row but no validation
            row, so the two sides would validate different users.
    """
    if keep_last is not None and keep_last < 4:
        raise ValueError(
            f"keep_last={keep_last}: keep at least 4 items (2 training items and "
            "the 2 targets) so that RecBole validates every user."
        )
    for user, items in enumerate(data.train, start=1):
        if len(items) < 2:
            raise ValueError(
                f"{data.name}: user {user} has {len(items)} training item(s); "
                "RecBole validates only users with at least 2."
            )
    folder = Path(folder)
    target = folder / data.name
    target.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user, sequence in enumerate(data.sequences(keep_last), start=1):
        lines.extend(
            f"{user}\t{item}\t{position}" for position, item in enumerate(sequence)
        )
    (target / f"{data.name}.inter").write_text(
        "\n".join(lines) + "\n", encoding="utf-8"
    )
    return folder


def recbole_split_config():
    """RecBole settings that reproduce the reference's leave-one-out split."""
    return {
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {
            "split": {"LS": "valid_and_test"},
            "order": "TO",
            "group_by": "user",
            "mode": "full",
        },
        # the reference's data are already filtered: keep every user and item
        "user_inter_num_interval": "[0,inf)",
        "item_inter_num_interval": "[0,inf)",
        "val_interval": None,
        "filter_inter_by_user_or_item": False,
    }
