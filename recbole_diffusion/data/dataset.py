"""Whole-sequence training data for models with a target at every position.

RecBole's :class:`~recbole.data.dataset.SequentialDataset` turns every prefix
of a user's history into a training row with one target. ADRec and CDDRec
instead learn from the whole sequence at once: position ``n`` of the input
predicts item ``n + 1``. :class:`WholeSequenceDataset` keeps, per user, the
row of the longest training prefix (the last ``MAX_ITEM_LIST_LENGTH`` training
items) and adds the shifted target list; validation and test rows are
RecBole's, unchanged, so evaluation is the same as for every other model.
"""

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.utils.enum_type import FeatureSource, FeatureType

from recbole_diffusion.utils import ConfigError

__all__ = ["TARGET_LIST_PREFIX", "WholeSequenceDataset"]

TARGET_LIST_PREFIX = "target_"


class WholeSequenceDataset(SequentialDataset):
    """One training row per user (or per window) with a target at every position.

    Training rows hold ``ITEM_SEQ`` (input items, right-padded), ``ITEM_SEQ_LEN``,
    ``ITEM_ID`` (the last target, as in RecBole) and ``target_<ITEM_SEQ>``: the
    next item at every position (0 at padding).

    Config:
        train_windows (str): ``last`` (default) keeps each user's last
            ``MAX_ITEM_LIST_LENGTH`` training items; ``all`` also cuts the rest
            of a longer history into non-overlapping windows of targets, so
            nothing is thrown away on long-history data such as ml-1m.
    """

    def __init__(self, config):
        self.train_windows = config["train_windows"] or "last"
        if self.train_windows not in ("last", "all"):
            raise ConfigError(
                f"train_windows={self.train_windows!r} is invalid: choose 'last' "
                "(one row per user) or 'all' (every window of a long history)."
            )
        super().__init__(config)

    @property
    def target_list_field(self):
        return TARGET_LIST_PREFIX + self.iid_field + self.config["LIST_SUFFIX"]

    def build(self):
        datasets = super().build()
        datasets[0] = self._whole_sequence_rows(datasets[0])
        return datasets

    def _whole_sequence_rows(self, train_dataset):
        """Select the rows that end each target window and add their targets."""
        inter = train_dataset.inter_feat
        uid = inter[self.uid_field].numpy()
        # Rows of a user are in time order after augmentation; a stable sort
        # by user keeps that order whatever the split did to user order.
        order = np.argsort(uid, kind="stable")
        sorted_uid = uid[order]
        starts = np.r_[0, np.flatnonzero(sorted_uid[1:] != sorted_uid[:-1]) + 1]
        ends = np.r_[starts[1:], len(sorted_uid)]
        group_end = np.repeat(ends, ends - starts)
        rows_after = group_end - 1 - np.arange(len(sorted_uid))
        if self.train_windows == "all":
            keep = rows_after % self.max_item_list_len == 0
        else:
            keep = rows_after == 0
        selected = torch.from_numpy(order[keep])

        new_inter = inter[selected]
        item_seq = new_inter[self.item_id_list_field]
        seq_len = new_inter[self.item_list_length_field]
        targets = torch.zeros_like(item_seq)
        targets[:, :-1] = item_seq[:, 1:]
        # Position len-1 predicts the row's own target; positions past the
        # sequence were padding in item_seq and stay 0 here.
        targets[torch.arange(len(seq_len)), seq_len - 1] = new_inter[self.iid_field]
        targets[
            torch.arange(item_seq.shape[1]).unsqueeze(0) >= seq_len.unsqueeze(1)
        ] = 0
        new_inter[self.target_list_field] = targets

        whole = train_dataset.copy(new_inter)
        # Field metadata is shared between split copies; give the training
        # split its own so valid and test rows do not claim the new column.
        whole.field2type = dict(train_dataset.field2type)
        whole.field2source = dict(train_dataset.field2source)
        whole.field2seqlen = dict(train_dataset.field2seqlen)
        whole.set_field_property(
            self.target_list_field,
            FeatureType.TOKEN_SEQ,
            FeatureSource.INTERACTION,
            self.max_item_list_len,
        )
        return whole
