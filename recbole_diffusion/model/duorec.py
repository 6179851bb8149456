r"""
DuoRec
################################################

Reference:
    Ruihong Qiu, Zi Huang, Hongzhi Yin, Zijian Wang. "Contrastive Learning for
    Representation Degeneration Problem in Sequential Recommendation." In WSDM 2022.

Reference code:
    https://github.com/RuihongQiu/DuoRec

DuoRec is SASRec trained with cross-entropy over all items plus a contrastive
regulariser (InfoNCE with in-batch negatives) between two views of each
sequence representation. ``contrast`` picks the views:

- ``un``: the sequence and a second, dropout-augmented pass of the same sequence
  (weight ``lmd``);
- ``su``: the sequence and a different training sequence with the same target
  item (weight ``lmd_sem``);
- ``us``: both terms;
- ``us_x`` (default, the paper's DuoRec): a dropout-augmented pass of the
  sequence and a different training sequence with the same target item
  (weight ``lmd_sem``).

Deviations:
    - Same-target index. The reference code builds it with a per-row
      ``np.where`` scan over all training rows (quadratic) and caches it in
      ``<data_path>/semantic_augmentation.npy``, a file keyed by path only that
      goes stale when the split, the filtering or ``MAX_ITEM_LIST_LENGTH``
      change. Here it is built in memory from the training dataset the model
      receives, with one sort (see :meth:`DuoRec.build_same_target_index`), and
      kept in non-persistent buffers: never stale, never in checkpoints.
    - "A different sequence" means different content. The reference excludes
      only the row itself, so a row can be paired with an identical row of
      another user (same history, same target), whose "positive" is then a
      mere dropout copy. Rows with identical content are excluded (as FEARec in
      RecBole 1.2.1 does by comparing sequences); the row itself is used only
      when no training row with the same target and different content exists
      (the reference: when no other row exists). Identity is decided by a
      64-bit hash of the sequence (see :meth:`DuoRec._sequence_hash`), so a
      different sequence whose hash collides with the anchor's is also left
      out of the pool; the chance is about 2**-51 per pair on ml-1m.
    - Positives are drawn in ``calculate_loss`` with torch operations on the
      model's device, not per row with ``np.random`` in a custom data loader,
      so RecBole's stock training loader works unchanged. The distribution is
      the same (uniform over the eligible rows); the random stream differs.
    - InfoNCE is cross-entropy over the [2B, 2B] similarity matrix with the
      diagonal set to -inf and the partner as the label. This equals the
      reference's logits ``[positive, 2B - 2 masked negatives]`` exactly,
      without its Python loop that rebuilds the mask for every new batch size.
    - ``sim: cos`` normalises each vector (eps 1e-12) where the reference uses
      ``cosine_similarity`` (eps on the product of norms): equal for non-zero
      vectors.
    - Only ``loss_type: CE`` (the paper's setting) is accepted; the reference
      code also carries SASRec's BPR branch.
    As in the paper and the reference code, other in-batch samples with the
    same target stay negatives, and ``us_x`` does not use ``lmd``.
"""

import functools

import torch
import torch.nn.functional as F
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_diffusion.fast_layers import cross_entropy, use_fast_layers
from recbole_diffusion.utils import (
    ConfigError,
    check_choice,
    check_heads_divide_hidden,
    check_non_negative,
    check_positive_int,
    check_probability,
)

__all__ = ["DuoRec"]

CONTRAST_MODES = ("un", "su", "us", "us_x")
SIMILARITIES = ("dot", "cos")


@functools.cache
def _hash_multipliers(length):
    """Odd 64-bit constants, one per position, fixed by a seed: the same at index
    build time and at batch time, in every process."""
    generator = torch.Generator().manual_seed(20220221)
    multipliers = torch.randint(-(2**62), 2**62, (length,), generator=generator)
    return tuple((multipliers * 2 + 1).tolist())


class DuoRec(SASRec):
    r"""SASRec with DuoRec's unsupervised and supervised contrastive regularisers.

    The backbone (embeddings, Transformer, ``forward``, ``predict``,
    ``full_sort_predict``) is SASRec's, unchanged; only the training loss
    differs. ``dataset`` must be the training split (RecBole's pipeline passes
    ``train_data._dataset``): the supervised positives are drawn from its rows,
    and a dataset holding validation or test rows would leak their targets.
    """

    # set by use_fast_layers (config fast_cross_entropy): the contrastive
    # loss's cross-entropy through fast_layers.cross_entropy
    fast_cross_entropy = True

    @classmethod
    def validate_config(cls, config):
        """Refuse hyperparameters that cannot work, before any data is loaded."""
        for key in (
            "n_layers",
            "n_heads",
            "hidden_size",
            "inner_size",
            "MAX_ITEM_LIST_LENGTH",
        ):
            check_positive_int(config, key)
        check_heads_divide_hidden(config)
        check_probability(config, "hidden_dropout_prob")
        check_probability(config, "attn_dropout_prob")
        check_choice(config, "loss_type", ["CE"])
        check_choice(config, "contrast", CONTRAST_MODES)
        check_choice(config, "sim", SIMILARITIES)
        check_non_negative(config, "lmd")
        check_non_negative(config, "lmd_sem")
        if check_non_negative(config, "tau") == 0:
            raise ConfigError(
                "tau=0 is invalid: the temperature divides the similarities and "
                "must be > 0 (set e.g. --tau=1)."
            )

    def __init__(self, config, dataset):
        self.validate_config(config)
        # SASRec loads its parameters, defines the backbone and initialises it.
        super().__init__(config, dataset)

        # load parameters info
        self.contrast = config["contrast"]
        self.lmd = config["lmd"]  # weight of the unsupervised term (un, us)
        self.lmd_sem = config["lmd_sem"]  # weight of the supervised term
        self.tau = config["tau"]
        self.sim = config["sim"]

        # define the same-target index (no parameters, so nothing to initialise)
        keys, seqs, lengths, hash_bits = self.build_same_target_index(
            dataset.inter_feat[self.ITEM_ID],
            dataset.inter_feat[self.ITEM_SEQ],
            dataset.inter_feat[self.ITEM_SEQ_LEN],
            n_items=self.n_items,
        )
        self.hash_bits = hash_bits
        # Non-persistent: rebuilt from the dataset at every construction, so
        # checkpoints stay small and can never carry an index of other data.
        self.register_buffer("same_target_keys", keys, persistent=False)  # [R]
        self.register_buffer("same_target_seqs", seqs, persistent=False)  # [R L]
        self.register_buffer("same_target_lengths", lengths, persistent=False)

        # cheaper dropout masks, GELU and cross-entropy on the CPU, same maths
        # (fast_dropout, fast_gelu, fast_cross_entropy; see
        # recbole_diffusion.fast_layers)
        use_fast_layers(self, config)

    # ------------------------------------------------------------------ #
    # same-target index
    # ------------------------------------------------------------------ #
    @staticmethod
    def _sequence_hash(item_seq, hash_bits, chunk_rows=65536):
        """Hash each row of ``item_seq`` [N L] to an integer in [0, 2**hash_bits).

        A multiplicative hash: sum over positions of (item + 1) times a fixed
        odd 64-bit constant of that position, wrapping mod 2**64, of which the
        top ``hash_bits`` bits are kept. Padding is 0 and real items are >= 1,
        so the padded row determines the length too: equal rows have equal
        hashes, and different rows collide with probability about
        2**-hash_bits. Rows are hashed in chunks to bound the [chunk L]
        temporary at index build time.
        """
        multipliers = torch.tensor(
            _hash_multipliers(item_seq.size(1)), device=item_seq.device
        )  # [L]
        hashed = torch.empty(item_seq.size(0), dtype=torch.long, device=item_seq.device)
        for start in range(0, item_seq.size(0), chunk_rows):
            chunk = item_seq[start : start + chunk_rows].long() + 1  # [chunk L]
            hashed[start : start + chunk_rows] = (chunk * multipliers).sum(-1)  # wraps
        # The top bits mix every position; the arithmetic shift of a negative
        # value is cut back to hash_bits bits by the mask.
        return (hashed >> (64 - hash_bits)) & ((1 << hash_bits) - 1)

    @classmethod
    def build_same_target_index(cls, target_item, item_seq, item_seq_len, n_items):
        """Group the training rows by target item, vectorised, in one sort.

        Each row gets the key ``target << hash_bits | hash(sequence)``, with
        ``hash_bits = 63 - bit_length(n_items)`` so that keys of all targets fit
        in a non-negative int64. Sorting the keys puts the rows of one target in
        one contiguous block, and inside it the rows with identical content
        next to each other. At batch time a row's block and its identical-content
        sub-block are found by binary search on the sorted keys
        (:meth:`sample_same_target`), with no row identity needed; building
        costs O(R L + R log R), where the reference's scan is O(R^2).

        Args:
            target_item (torch.LongTensor): [R] the target item of each row.
            item_seq (torch.LongTensor): [R L] the right-padded histories.
            item_seq_len (torch.LongTensor): [R] the history lengths.
            n_items (int): number of item ids (targets are < n_items).

        Returns:
            tuple: sorted keys [R] (int64), histories [R L] and lengths [R] in
            key order (int32, to halve their memory), and ``hash_bits``.
        """
        hash_bits = 63 - int(n_items).bit_length()
        keys = (target_item.long() << hash_bits) | cls._sequence_hash(
            item_seq, hash_bits
        )
        keys, order = torch.sort(keys, stable=True)
        seqs = torch.index_select(item_seq.to(torch.int32), 0, order)
        lengths = torch.index_select(item_seq_len.to(torch.int32), 0, order)
        return keys.contiguous(), seqs, lengths, hash_bits

    def sample_same_target(self, item_seq, item_seq_len, target_item):
        """Draw, per row, a training sequence with the same target and other content.

        Uniform over the training rows that share the row's target and differ
        from it in content; the row itself where there is none (including a
        target never seen in training). Vectorised: four binary searches and
        one gather per batch.

        Returns:
            tuple: positive histories [B L] and their lengths [B].
        """
        keys = self.same_target_keys
        if keys.numel() == 0:
            return item_seq, item_seq_len
        target = target_item.long()
        own_key = (target << self.hash_bits) | self._sequence_hash(
            item_seq, self.hash_bits
        )
        group_start = torch.searchsorted(keys, target << self.hash_bits)  # [B]
        group_end = torch.searchsorted(keys, (target + 1) << self.hash_bits)
        same_start = torch.searchsorted(keys, own_key)
        same_end = torch.searchsorted(keys, own_key, right=True)
        n_same = same_end - same_start  # rows identical to this one, itself incl.
        n_other = group_end - group_start - n_same  # [B]

        # Uniform draw among the n_other eligible rows: a position in the block
        # with the identical sub-block cut out, then shifted past it.
        draw = (torch.rand(target.shape, device=keys.device) * n_other).long()
        draw = torch.minimum(draw, (n_other - 1).clamp(min=0))
        index = group_start + draw
        index = index + n_same * (index >= same_start)
        has_other = n_other > 0
        index = torch.where(has_other, index, torch.zeros_like(index))

        pos_seq = torch.where(
            has_other.unsqueeze(1), self.same_target_seqs[index].long(), item_seq
        )  # [B L]
        pos_len = torch.where(
            has_other, self.same_target_lengths[index].long(), item_seq_len
        )  # [B]
        return pos_seq, pos_len

    # ------------------------------------------------------------------ #
    # training loss
    # ------------------------------------------------------------------ #
    def info_nce(self, z_i, z_j):
        """InfoNCE over the 2B in-batch samples, as in the reference code.

        Sample k of ``cat(z_i, z_j)`` has its partner (k + B mod 2B) as the
        positive and the other 2B - 2 samples as negatives; its similarity with
        itself is excluded.

        Args:
            z_i (torch.Tensor): [B H] first view.
            z_j (torch.Tensor): [B H] second view, row-aligned with ``z_i``.

        Returns:
            torch.Tensor: the mean loss over the 2B samples.
        """
        batch_size = z_i.size(0)
        z = torch.cat([z_i, z_j], dim=0)  # [2B H]
        if self.sim == "cos":
            z = F.normalize(z, dim=-1)
        logits = torch.matmul(z, z.transpose(0, 1)) / self.tau  # [2B 2B]
        self_pair = torch.eye(2 * batch_size, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_pair, float("-inf"))
        arange = torch.arange(batch_size, device=z.device)
        labels = torch.cat([arange + batch_size, arange])  # [2B] partner index
        return cross_entropy(logits, labels, fast=self.fast_cross_entropy)

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]  # [B L]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]  # [B]
        pos_items = interaction[self.POS_ITEM_ID]  # [B]
        seq_output = self.forward(item_seq, item_seq_len)  # [B H]
        logits = torch.matmul(seq_output, self.item_embedding.weight.transpose(0, 1))
        loss = self.loss_fct(logits, pos_items)

        # A second pass of the same input differs from the first only by its
        # dropout draw: that is the unsupervised augmentation.
        if self.contrast in ("un", "us", "us_x"):
            aug_output = self.forward(item_seq, item_seq_len)  # [B H]
        if self.contrast in ("su", "us", "us_x"):
            sem_seq, sem_len = self.sample_same_target(
                item_seq, item_seq_len, pos_items
            )
            sem_output = self.forward(sem_seq, sem_len)  # [B H]

        if self.contrast in ("un", "us"):
            loss = loss + self.lmd * self.info_nce(seq_output, aug_output)
        if self.contrast in ("su", "us"):
            loss = loss + self.lmd_sem * self.info_nce(seq_output, sem_output)
        if self.contrast == "us_x":
            loss = loss + self.lmd_sem * self.info_nce(aug_output, sem_output)
        return loss
