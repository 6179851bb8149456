r"""
CDDRec
################################################

Reference:
    Yu Wang, Zhiwei Liu, Liangwei Yang, Philip S. Yu. "Conditional Denoising
    Diffusion for Sequential Recommendation." In PAKDD 2024 (arXiv 2304.11433).

Reference code:
    https://github.com/YuWang-1024/CDDRec (models.py, modules.py, datasets.py,
    trainers.py)

A SASRec encoder turns the history into one state per position, ``c``
([B L H]). A cross-attentive decoder (Eq. 3) predicts, for every diffusion step
``i`` and every position ``n``, the denoised mean ``mu_theta(c, i)_n`` of the
next item's embedding: the learned step embedding ``e_i`` is the query at
every position, the encoder states ``c_1..c_n`` are the keys and values. The
generated preference is ``x_hat_i = mu_theta(c, i) + sqrt(posterior
variance_i) z`` (Eq. 4) and the corrupted target ``pos_i = q_sample(E[next
item], i)`` (Eq. 2).

Training sums over ALL T steps, with weight ``1 / (i + 1)`` (Eq. 8):
``L_cd + cl_weight (L_in + L_cross)`` where

- ``L_cd`` (cross-divergence, Eq. 5): ``-log sigmoid(s(x_hat_i, pos_i)) -
  log(1 - sigmoid(s(x_hat_i, E[neg])))`` with one negative per position drawn
  outside the user's training row. ``cd_score: dot`` is ``s = <a, b>`` (the
  reference code); ``cd_score: kl`` is minus the KL divergence between two
  Gaussians with the step's posterior variance ``v_i`` (the paper's wording):
  ``s = -||a - b||^2 / (2 v_i)``. **The default is ``dot``**: it is the
  reference code's choice and it validates far better (synthetic stride data
  of 200 users and 60 items, H 32, T 10, L 10, 20 epochs, seeds 1-3: best
  valid NDCG@10 0.366 with dot, 0.111 with kl; test 0.348 vs 0.081). With
  ``kl`` the posterior variances (1e-4 .. 2e-3) turn the positive term into
  a steep squared distance (training losses near 1e6) while the negative
  term saturates at ``log 2``, so the negatives stop pushing.
- ``L_in`` (in-view InfoNCE, Eq. 6) between ``x_hat_i`` and ``pos_i`` over
  every real target position of the batch, and ``L_cross`` (cross-view
  InfoNCE, Eq. 7) between ``x_hat_i`` and the decoder output of an augmented
  view of the same sequence at the same history position; temperature
  ``tau``. The augmented view is one of crop (keep 60%), mask (30% of the
  items become a mask token) or reorder (shuffle a 60% window), drawn per
  sequence.

The training rows are whole sequences with the next item at every position
(:class:`~recbole_diffusion.data.WholeSequenceDataset`); positions whose
target is 0 (padding) contribute nothing.

Everything per step is batched: the encoder runs once per batch on the
original and the augmented views together ([2B L]); the decoder projects keys
and values once per user and the step queries once per step, and runs all T
steps in one call on the tokens that enter a loss only ([T N+M H]: the N
real target positions and the M augmented-view positions paired with them),
so padding costs nothing after the encoder. ``step_chunk_size`` splits the
steps into chunks recomputed in the backward pass (activation checkpointing)
to bound memory; each chunk then projects keys and values again (the default,
all T steps in one call, does it once). The in-batch InfoNCE over all N tokens ([T 2N 2N]) is the
dominant cost, as in the reference code. Negatives and augmentations are drawn with tensor operations (no
Python loop over rows) from torch's global generator, which RecBole's
``init_seed`` seeds.

Inference: ``mu_theta(c, 0)`` at the last real position (no noise), scored
against every item embedding with ``score: cos`` (cosine similarity, the
reference code) or ``dot``.

Deviations:
    - The decoder is the paper's Eq. 3, batch first. The reference code calls
      ``nn.TransformerDecoderLayer(c, e_t)`` with ``batch_first`` off on
      [B L H] tensors, so its attention runs over the batch axis (users mix)
      with ``c`` as the query and the step embedding as keys and values, plus
      an unmasked self-attention over ``c``. Here: ``e_i`` queries ``c``
      under a causal and padding mask, 4 heads, residual with ``c_n``,
      LayerNorm, FFN of width H (GELU, dropout), residual, LayerNorm; dropout
      ``decoder_dropout_prob`` (0.2) on the attention weights, after the
      attention, inside and after the FFN, as in the stock layer. LayerNorm
      epsilon ``layer_norm_eps`` (the stock layer: 1e-5); every Linear is
      initialised N(0, 0.02) (the stock layer's fused q/k/v projection
      keeps torch's Xavier-uniform in the reference code).
    - The in-view and cross-view InfoNCE are the reference code's symmetric
      NT-Xent over the 2N token representations with cosine similarity
      (``F.normalize``, then ``/ tau``): each token's partner is its positive
      and the other 2N - 2 tokens its negatives. Eq. 6/7 write dot products
      and the anchors ``x_hat`` only; the rows anchored at ``x_hat`` are
      exactly Eq. 6/7 with cosine similarity.
    - Cross-view pairs are aligned by history position: position ``n`` of the
      sequence is paired with the augmented view's position holding the same
      item slot (``n - start`` for a crop, ``n`` for mask and reorder), and
      only positions with a real target that exist in both views count. The
      reference pairs every position of the two left-padded arrays, padding
      included.
    - The augmentation is drawn per sequence among the three; the reference
      compares a one-element list with 0 and 1 and so always reorders. A crop
      keeps at least one item (the reference may keep none). The mask token
      has its own learned vector (never scored); the reference adds it as an
      extra item row that full ranking then scores.
    - Negatives are uniform over the items absent from the training row (its
      input items and its targets), drawn exactly with one sorted search per
      batch. The reference excludes the user's whole history, valid and test
      items included, which leaks the held-out targets into training. The
      training row is the user's whole training history when it fits in L
      (nearly every Amazon user at L 20); a longer history's older items,
      and with ``train_windows: all`` the user's other windows, can be drawn
      as negatives (the spec's "outside the user's sequence" read as the
      sequence the model is shown).
    - Only the spec's loss is used: the reference also adds the
      cross-divergence of the augmented view at every step, which the paper
      (Eq. 8) does not have.
    - ``x_hat_i = mu + sqrt(v_i) z`` with the posterior variance ``v_i`` of
      step ``i`` (Eq. 4 writes the variance where the standard deviation
      belongs; the reference code uses the square root too). ``v_0 = 0``; the
      reference uses the variance of step 1 at ``i = 0`` (its clipped log
      variance). ``cd_score: kl`` divides by that clipped variance, since
      step 0's is 0.
    - Inference scores the mean ``mu_theta(c, 0)``; the reference adds noise
      of the clipped step-1 variance at inference and masks the user's
      history: it sets the scores of the training items (at test also the
      validation item) to 0, not -inf, so with cosine scores in [-1, 1] a
      masked item still outranks every item of negative cosine. RecBole's
      protocol masks nothing. Measured on the reference's Beauty (training
      parity, ``benchmarks/results/parity.md``: T 2, batch 32, 3 epochs, seed
      2020): the reference's test NDCG@10 is 0.0212 with its masking and
      0.0159 without; ours, unmasked, 0.0194 (0.0196 with seed 2021). So
      under one protocol ours scores above the reference, and comparisons
      with the paper's numbers mix the two protocols.
    - On Amazon Beauty beta_T is 0.1 (``props/CDDRec/amazon-beauty.yaml``),
      the paper's best on Beauty (Sec. 4.4); the reference's README command
      for Beauty keeps its default 0.002 (the spec's value). Measured at H
      64, batch 16, 6 epochs, 2 seeds (``benchmarks/results/cddrec-beta-t.md``):
      best validation NDCG@10 0.0302 with 0.1 against 0.0254 with 0.002,
      test NDCG@10 0.0212 against 0.0176.
    - The reference's ``linear_infonce`` approximation (a random-feature
      estimate of the InfoNCE denominator; off by default in its ``main.py``,
      on in its README's commands) is not provided. Measured as above, the
      reference with it on: test NDCG@10 0.0194 against 0.0212 with the exact
      loss (seed 2020).
"""

import math

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.utils import InputType
from torch import nn
from torch.utils.checkpoint import checkpoint

from recbole_diffusion.data import TARGET_LIST_PREFIX
from recbole_diffusion.diffusion import (
    BETA_SCHEDULES,
    GaussianDiffusion,
    get_beta_schedule,
)
from recbole_diffusion.fast_layers import FastDropout, use_fast_layers
from recbole_diffusion.model.nt_xent import FAST_NT_XENT_SPAN, Workspace, nt_xent
from recbole_diffusion.utils import (
    ConfigError,
    check_choice,
    check_heads_divide_hidden,
    check_non_negative,
    check_positive_int,
    check_probability,
    config_value,
)

__all__ = ["CD_SCORES", "CDDRec", "CrossAttentiveDecoder", "SCORES"]

CD_SCORES = ("dot", "kl")
SCORES = ("cos", "dot")
AUGMENTATIONS = ("crop", "mask", "reorder")


def _swap_steps_and_heads(weights):
    """[N S h Lk] <-> [N h S Lk], a view."""
    return weights.transpose(1, 2)


class CrossAttentiveDecoder(nn.Module):
    """Eq. 3: the step embedding queries the encoder states, causally.

    For step ``i`` and position ``n``: ``a = MHA(q = e_i, k = v = c_{1..n})``
    over the real positions up to ``n``; ``h = LN(c_n + Drop(a))``;
    ``out = LN(h + Drop(W2 Drop(GELU(W1 h))))`` with W1, W2 of width H.

    Keys and values are projected once per user and the queries once per
    step, so all steps cost one call; users are never mixed (the batch axis
    is never attended over).
    """

    def __init__(self, hidden_size, n_heads, num_steps, dropout_prob, layer_norm_eps):
        super().__init__()
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.step_embedding = nn.Embedding(num_steps, hidden_size)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(dropout_prob)
        self.attn_output_dropout = nn.Dropout(dropout_prob)
        self.attn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, hidden_size),
            nn.GELU(),
            nn.Dropout(dropout_prob),
            nn.Linear(hidden_size, hidden_size),
        )
        self.ffn_dropout = nn.Dropout(dropout_prob)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def decode_tokens(
        self, context, real, steps, batch_index, position_index, return_attention=False
    ):
        """Denoised means at chosen positions, for every step.

        Only the chosen query tokens pay for the output projection and the FFN
        (training asks for the real target positions only); keys and values
        are projected once per user and the step queries once per step.

        Args:
            context (torch.Tensor): [B L H] encoder states ``c``.
            real (torch.BoolTensor): [B L] True at real items, False at padding.
            steps (torch.LongTensor): [S] diffusion steps in 0..T-1.
            batch_index, position_index (torch.LongTensor): [N] the row and
                position of each query token.
            return_attention (bool): also return the attention weights
                [N S heads L] (after the mask, before dropout).

        Returns:
            torch.Tensor: [S N H] ``mu_theta(c, step)`` at each token.
        """
        batch, length, hidden = context.shape
        n_steps, n_tokens = steps.numel(), batch_index.numel()
        heads, size = self.n_heads, self.head_size
        # 1/sqrt(d) on the [S H] queries, not on the [N h S Lk] logits
        query = self.query(self.step_embedding(steps)) / math.sqrt(size)  # [S H]
        query = query.view(n_steps, heads, size)  # [S h d]
        key = self.key(context).view(batch, length, heads, size)
        value = self.value(context).view(batch, length, heads, size)
        # The query is the same at every position: one logit per (step, key).
        # Head-major ([N h S Lk]): the product with the values below is then
        # a batched product over (token, head) that needs no copies of its
        # operands (9% of the decoder's forward and backward, measured).
        logits = torch.einsum("shd,bmhd->bhsm", query, key)[batch_index]
        # Causal and padding mask: token (b, n) sees the real keys m <= n. A
        # token with none (only in an all-padding row) may see key 0, so its
        # output stays finite; it is never used.
        positions = torch.arange(length, device=context.device)
        allowed = (positions <= position_index.unsqueeze(1)) & real[batch_index]
        allowed[:, 0] |= ~allowed.any(dim=1)  # [N Lk]
        logits = logits.masked_fill(~allowed[:, None, None, :], float("-inf"))
        probs = torch.softmax(logits, dim=-1)  # [N h S Lk]
        attended = torch.matmul(
            self._attention_dropout(probs), value.transpose(1, 2)[batch_index]
        )  # [N h S d]
        attended = attended.permute(2, 0, 1, 3).reshape(n_steps, n_tokens, hidden)
        residual = context[batch_index, position_index]  # [N H], c_n
        hidden_states = self.attn_norm(
            residual + self.attn_output_dropout(self.output(attended))
        )  # [S N H]
        output = self.ffn_norm(
            hidden_states + self.ffn_dropout(self.feed_forward(hidden_states))
        )  # [S N H]
        if return_attention:
            return output, probs.transpose(1, 2)  # [N S h Lk]
        return output

    def _attention_dropout(self, probs):
        """Dropout of the weights ``probs`` [N h S Lk] with the random numbers
        of a dropout of their [N S h Lk] layout (the mask is drawn in that
        order), so the head-major layout keeps the model's random stream."""
        if not self.attn_dropout.training or self.attn_dropout.p == 0:
            return probs
        if isinstance(self.attn_dropout, FastDropout):
            tokens, heads, steps, keys = probs.shape
            return self.attn_dropout(
                probs, ((tokens, steps, heads, keys), _swap_steps_and_heads)
            )
        # torch's dropout draws in memory order: drop out a [N S h Lk] copy
        return _swap_steps_and_heads(
            self.attn_dropout(_swap_steps_and_heads(probs).contiguous())
        )

    def forward(self, context, real, steps, return_attention=False):
        """Denoised means at every position and step.

        Args:
            context (torch.Tensor): [B L H] encoder states ``c``.
            real (torch.BoolTensor): [B L] True at real items.
            steps (torch.LongTensor): [S] diffusion steps.
            return_attention (bool): also return the attention weights
                [B S heads Lq Lk].

        Returns:
            torch.Tensor: [B S L H] ``mu_theta(c, steps)``.
        """
        batch, length, hidden = context.shape
        rows = torch.arange(batch, device=context.device)
        positions = torch.arange(length, device=context.device)
        batch_index = rows.repeat_interleave(length)  # [B*L], row-major
        position_index = positions.repeat(batch)
        result = self.decode_tokens(
            context, real, steps, batch_index, position_index, return_attention
        )
        output = result[0] if return_attention else result  # [S B*L H]
        output = output.view(-1, batch, length, hidden).transpose(0, 1)
        if not return_attention:
            return output  # [B S L H]
        probs = result[1].view(batch, length, *result[1].shape[1:])  # [B Lq S h Lk]
        return output, probs.permute(0, 2, 3, 1, 4)  # [B S h Lq Lk]


class CDDRec(SequentialRecommender):
    r"""Conditional denoising diffusion: SASRec encoder, cross-attentive decoder.

    ``dataset`` only provides the item count; training batches must come from
    :class:`~recbole_diffusion.data.WholeSequenceDataset` (the pipeline uses it
    for CDDRec), whose rows carry the next item at every position.
    """

    input_type = InputType.POINTWISE

    @classmethod
    def validate_config(cls, config):
        """Refuse hyperparameters that cannot work, before any data is loaded."""
        for key in (
            "n_layers",
            "n_heads",
            "hidden_size",
            "inner_size",
            "MAX_ITEM_LIST_LENGTH",
            "diffusion_steps",
        ):
            check_positive_int(config, key)
        check_heads_divide_hidden(config)
        for key in ("hidden_dropout_prob", "attn_dropout_prob", "decoder_dropout_prob"):
            check_probability(config, key)
        check_non_negative(config, "initializer_range")
        check_choice(config, "noise_schedule", BETA_SCHEDULES)
        get_beta_schedule(
            config["noise_schedule"],
            config["diffusion_steps"],
            config_value(config, "beta_start"),
            config_value(config, "beta_end"),
        )
        check_choice(config, "cd_score", CD_SCORES)
        check_choice(config, "score", SCORES)
        check_non_negative(config, "cl_weight")
        if check_non_negative(config, "tau") == 0:
            raise ConfigError(
                "tau=0 is invalid: the temperature divides the similarities and "
                "must be > 0 (set e.g. --tau=0.5)."
            )
        for key in ("aug_crop_ratio", "aug_reorder_ratio"):
            value = check_non_negative(config, key)
            if not 0 < value <= 1:
                raise ConfigError(
                    f"{key}={value!r} is invalid: it is the share of the sequence "
                    f"kept or shuffled, in (0, 1] (set e.g. --{key}=0.6)."
                )
        check_probability(config, "aug_mask_ratio")
        chunk = config_value(config, "step_chunk_size")
        if chunk is not None:
            check_positive_int(config, "step_chunk_size")

    def __init__(self, config, dataset):
        self.validate_config(config)
        super().__init__(config, dataset)

        # load parameters info
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_size = config["hidden_size"]  # same as embedding_size
        self.inner_size = config["inner_size"]  # encoder feed-forward width
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.decoder_dropout_prob = config["decoder_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.num_steps = config["diffusion_steps"]
        self.cd_score = config["cd_score"]
        self.score = config["score"]
        self.cl_weight = config["cl_weight"]
        self.tau = config["tau"]
        self.aug_crop_ratio = config["aug_crop_ratio"]
        self.aug_mask_ratio = config["aug_mask_ratio"]
        self.aug_reorder_ratio = config["aug_reorder_ratio"]
        self.step_chunk_size = config_value(config, "step_chunk_size", self.num_steps)
        # NT-Xent in fewer passes (same loss; fast_info_nce: False keeps the
        # cross-entropy form)
        self.fast_info_nce = bool(config_value(config, "fast_info_nce", True))
        # its [S 2N 2N] matrices, reused from step to step (emptied in eval)
        self.nt_xent_workspace = Workspace()
        self.TARGET_SEQ = TARGET_LIST_PREFIX + self.ITEM_SEQ
        # The augmentation's mask token: an id past the item table, embedded by
        # its own vector, so it is never ranked.
        self.mask_token_id = self.n_items

        # define layers and loss
        self.item_embedding = nn.Embedding(
            self.n_items, self.hidden_size, padding_idx=0
        )
        self.mask_embedding = nn.Parameter(torch.empty(self.hidden_size))
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            hidden_size=self.hidden_size,
            inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
        )
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        self.decoder = CrossAttentiveDecoder(
            self.hidden_size,
            self.n_heads,
            self.num_steps,
            self.decoder_dropout_prob,
            self.layer_norm_eps,
        )
        self.diffusion = GaussianDiffusion(
            self.num_steps,
            schedule=config["noise_schedule"],
            beta_start=config_value(config, "beta_start"),
            beta_end=config_value(config, "beta_end"),
        )
        # Variance of the KL score: the step's posterior variance, which is 0
        # at step 0; there the reference's clipped value (step 1's) is used.
        posterior_variance = self.diffusion.posterior_variance
        floor = posterior_variance[1] if self.num_steps > 1 else self.diffusion.betas[0]
        self.register_buffer(
            "kl_variance", posterior_variance.clamp(min=float(floor)), persistent=False
        )  # [T]

        # parameters initialization
        self.apply(self._init_weights)
        nn.init.normal_(self.mask_embedding, mean=0.0, std=self.initializer_range)

        # cheaper dropout masks and GELU on the CPU, same maths (fast_dropout,
        # fast_gelu; see recbole_diffusion.fast_layers)
        use_fast_layers(self, config)

    def train(self, mode=True):
        if not mode:
            # evaluation computes no NT-Xent: its memory is free for scoring
            self.nt_xent_workspace.clear()
        return super().train(mode)

    def _init_weights(self, module):
        """N(0, initializer_range) weights, zero biases, unit LayerNorms."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=self.initializer_range)
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)
        if isinstance(module, nn.Linear) and module.bias is not None:
            module.bias.data.zero_()

    # ------------------------------------------------------------------ #
    # encoder and decoder
    # ------------------------------------------------------------------ #
    def embed_items(self, item_seq):
        """Item embeddings of ``item_seq`` [B L], the mask token included."""
        is_mask = item_seq == self.mask_token_id
        embedded = self.item_embedding(item_seq.masked_fill(is_mask, 0))  # [B L H]
        return torch.where(is_mask.unsqueeze(-1), self.mask_embedding, embedded)

    def encode(self, item_seq):
        """SASRec states ``c`` [B L H] of right-padded ``item_seq`` [B L]."""
        position_ids = torch.arange(item_seq.size(1), device=item_seq.device)
        position_embedding = self.position_embedding(position_ids)  # [L H]
        input_emb = self.embed_items(item_seq) + position_embedding  # [B L H]
        input_emb = self.dropout(self.LayerNorm(input_emb))
        attention_mask = self.get_attention_mask(item_seq)  # causal + padding
        return self.trm_encoder(input_emb, attention_mask)[-1]  # [B L H]

    def denoise(self, item_seq, steps):
        """``mu_theta(c, steps)`` [B S L H] for ``item_seq`` [B L] and ``steps`` [S]."""
        return self.decoder(self.encode(item_seq), item_seq != 0, steps)

    def forward(self, item_seq, item_seq_len):
        """The preference ``mu_theta(c, 0)`` at the last real position [B H]."""
        steps = torch.zeros(1, dtype=torch.long, device=item_seq.device)
        rows = torch.arange(item_seq.size(0), device=item_seq.device)
        last = (item_seq_len - 1).clamp(min=0)
        context = self.encode(item_seq)  # [B L H]
        return self.decoder.decode_tokens(context, item_seq != 0, steps, rows, last)[0]

    # ------------------------------------------------------------------ #
    # negatives and augmentations (vectorised)
    # ------------------------------------------------------------------ #
    def sample_negatives(self, item_seq, target_seq):
        """One item per position, uniform over the items absent from the row.

        The row's items are its inputs ``item_seq`` [B L] and its targets
        ``target_seq`` [B L]. Exact, without rejection: the r-th absent item
        is ``r + 1 + #{members m : m - 1 - rank(m) <= r}`` (items are 1..N-1),
        found by one batched ``searchsorted`` on the sorted distinct members.
        A row holding every item (possible only with tiny catalogues) gets an
        arbitrary item.

        Returns:
            torch.LongTensor: [B L] negatives in 1..N-1.
        """
        batch, length = item_seq.shape
        members = torch.cat([item_seq, target_seq], dim=1).sort(dim=1).values  # [B K]
        repeated = torch.zeros_like(members, dtype=torch.bool)
        repeated[:, 1:] = members[:, 1:] == members[:, :-1]
        invalid = repeated | (members <= 0) | (members >= self.n_items)
        members = members.masked_fill(invalid, self.n_items).sort(dim=1).values
        n_members = (~invalid).sum(dim=1, keepdim=True)  # [B 1]
        rank = torch.arange(members.size(1), device=members.device)  # [K]
        # Items absent from the row and smaller than each member; a sentinel
        # past every rank for the padding slots keeps the sequence sorted.
        absent_below = torch.where(
            rank < n_members, members - 1 - rank, 2 * self.n_items
        )  # [B K]
        n_absent = (self.n_items - 1 - n_members).clamp(min=1)  # [B 1]
        draw = torch.rand(batch, length, device=item_seq.device) * n_absent
        draw = torch.minimum(draw.long(), n_absent - 1)  # [B L]
        negatives = draw + 1 + torch.searchsorted(absent_below, draw, right=True)
        return negatives.clamp(max=self.n_items - 1)

    def augment_crop(self, item_seq, item_seq_len):
        """Keep a random window of ``floor(aug_crop_ratio * len)`` items (>= 1).

        Returns:
            tuple: cropped sequences [B L] (right-padded), their lengths [B] and
            the start of the window in the original [B].
        """
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        kept = (item_seq_len * self.aug_crop_ratio).floor().long().clamp(min=1)
        kept = torch.minimum(kept, item_seq_len.clamp(min=1))
        start = torch.rand(item_seq_len.shape, device=item_seq.device)
        start = (start * (item_seq_len - kept + 1)).long()  # [B] in 0..len-kept
        index = (start.unsqueeze(1) + positions).clamp(max=item_seq.size(1) - 1)
        cropped = item_seq.gather(1, index)  # [B L]
        cropped = cropped.masked_fill(positions >= kept.unsqueeze(1), 0)
        return cropped, kept, start

    def augment_mask(self, item_seq, item_seq_len):
        """Replace ``floor(aug_mask_ratio * len)`` random items by the mask token.

        Returns:
            tuple: masked sequences [B L], their lengths [B], zero offsets [B].
        """
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        real = positions < item_seq_len.unsqueeze(1)  # [B L]
        n_masked = (item_seq_len * self.aug_mask_ratio).floor().long()  # [B]
        # A random order of the real positions: the first n_masked are masked.
        keys = torch.rand(item_seq.shape, device=item_seq.device).masked_fill(~real, 2)
        order = keys.argsort(dim=1).argsort(dim=1)  # rank of each position
        masked = (order < n_masked.unsqueeze(1)) & real
        augmented = item_seq.masked_fill(masked, self.mask_token_id)
        return augmented, item_seq_len, torch.zeros_like(item_seq_len)

    def augment_reorder(self, item_seq, item_seq_len):
        """Shuffle a random window of ``floor(aug_reorder_ratio * len)`` items.

        Returns:
            tuple: reordered sequences [B L], their lengths [B], zero offsets [B].
        """
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        width = (item_seq_len * self.aug_reorder_ratio).floor().long()  # [B]
        start = torch.rand(item_seq_len.shape, device=item_seq.device)
        start = (start * (item_seq_len - width + 1)).long().unsqueeze(1)  # [B 1]
        width = width.unsqueeze(1)
        inside = (positions >= start) & (positions < start + width)  # [B L]
        # Sort keys: a position outside the window keeps its own index; inside,
        # a random key in [start, start + width), so the window is permuted in
        # place and nothing crosses its borders.
        random_keys = start + torch.rand(item_seq.shape, device=item_seq.device) * width
        keys = torch.where(inside, random_keys, positions.float())
        reordered = item_seq.gather(1, keys.argsort(dim=1))
        return reordered, item_seq_len, torch.zeros_like(item_seq_len)

    def augment(self, item_seq, item_seq_len):
        """One of crop, mask or reorder per sequence, chosen uniformly.

        Returns:
            tuple: augmented sequences [B L], lengths [B], and the offset [B] of
            the augmented view's position 0 in the original (crop start, else
            0), used to pair positions of the two views.
        """
        choice = torch.randint(
            len(AUGMENTATIONS), item_seq_len.shape, device=item_seq.device
        )  # [B]
        views = [
            self.augment_crop(item_seq, item_seq_len),
            self.augment_mask(item_seq, item_seq_len),
            self.augment_reorder(item_seq, item_seq_len),
        ]
        seq, length, offset = views[0]
        for index, (other_seq, other_length, other_offset) in enumerate(views[1:], 1):
            chosen = choice == index
            seq = torch.where(chosen.unsqueeze(1), other_seq, seq)
            length = torch.where(chosen, other_length, length)
            offset = torch.where(chosen, other_offset, offset)
        return seq, length, offset

    # ------------------------------------------------------------------ #
    # training loss
    # ------------------------------------------------------------------ #
    def divergence_score(self, preference, item, steps):
        """``s(x_hat, e)`` of the cross-divergence loss, per token.

        Args:
            preference (torch.Tensor): [S N H].
            item (torch.Tensor): [S N H] or [N H].
            steps (torch.LongTensor): [S].

        Returns:
            torch.Tensor: [S N]; ``<a, b>`` (dot) or ``-||a - b||^2 / (2 v_i)``
            (kl).
        """
        if self.cd_score == "dot":
            return (preference * item).sum(-1)
        variance = self.kl_variance[steps].unsqueeze(1)  # [S 1]
        return -(preference - item).pow(2).sum(-1) / (2 * variance)

    def info_nce(self, view_a, view_b):
        """Symmetric NT-Xent per step, cosine similarity over ``tau``.

        Token k of ``cat(view_a, view_b)`` has its partner as positive and the
        other 2N - 2 tokens of the same step as negatives.

        Args:
            view_a, view_b (torch.Tensor): [S N H], row-aligned.

        Returns:
            torch.Tensor: [S] the mean loss over the 2N tokens of each step.
        """
        n_steps, n_tokens, _ = view_a.shape
        if n_tokens == 0:
            return view_a.new_zeros(n_steps)
        tokens = torch.cat([view_a, view_b], dim=1)  # [S 2N H]
        if self.fast_info_nce and 2.0 / self.tau <= FAST_NT_XENT_SPAN:
            # normalised inside (F.normalize's values and gradients)
            losses = nt_xent(tokens, self.tau, self.nt_xent_workspace, normalize=True)
            return losses.mean(dim=1)
        tokens = F.normalize(tokens, dim=-1)
        # 1 / tau on one side: the [S 2N 2N] logits need no extra pass.
        logits = torch.bmm(tokens / self.tau, tokens.transpose(1, 2))  # [S 2N 2N]
        logits.diagonal(dim1=1, dim2=2).fill_(float("-inf"))  # no self-pairs
        arange = torch.arange(n_tokens, device=tokens.device)
        partner = torch.cat([arange + n_tokens, arange])  # [2N]
        losses = F.cross_entropy(
            logits.reshape(n_steps * 2 * n_tokens, 2 * n_tokens),
            partner.repeat(n_steps),
            reduction="none",
        )
        return losses.view(n_steps, 2 * n_tokens).mean(dim=1)

    def _step_losses(self, context, real, tokens, x0, negative_emb, pair_mask, steps):
        """The three losses of ``steps`` [S], each weighted 1/(i+1) and summed.

        Args:
            context (torch.Tensor): [2B L H] states of the sequences, then of
                their augmented views.
            real (torch.BoolTensor): [2B L] real items of both.
            tokens (tuple): ``(batch_index, position_index)`` [N + M] of the N
                target tokens of the sequences, then of the M augmented-view
                tokens paired with the target tokens where ``pair_mask`` [N].
            x0 (torch.Tensor): [N H] embeddings of the targets.
            negative_emb (torch.Tensor): [N H] embeddings of the negatives.
            steps (torch.LongTensor): [S].

        Returns:
            tuple: the weighted sums of L_cd, L_in and L_cross (scalars).
        """
        n_steps, n_targets = steps.numel(), x0.size(0)
        mu = self.decoder.decode_tokens(context, real, steps, *tokens)  # [S N+M H]
        std = self.diffusion.posterior_variance[steps].sqrt().view(n_steps, 1, 1)
        preference = mu + std * torch.randn_like(mu)  # x_hat, Eq. 4
        x_hat, x_aug = preference[:, :n_targets], preference[:, n_targets:]
        positives = self.diffusion.q_sample(
            x0.expand(n_steps, -1, -1), steps
        )  # [S N H], Eq. 2

        positive_score = self.divergence_score(x_hat, positives, steps)  # [S N]
        negative_score = self.divergence_score(x_hat, negative_emb, steps)
        cross_divergence = (
            -F.logsigmoid(positive_score) - F.logsigmoid(-negative_score)
        ).mean(dim=1)  # [S], Eq. 5
        in_view = self.info_nce(x_hat, positives)  # [S], Eq. 6
        cross_view = self.info_nce(x_hat[:, pair_mask], x_aug)  # [S], Eq. 7

        weights = 1.0 / (steps.to(mu.dtype) + 1.0)  # step-adaptive, Eq. 8
        return (
            (weights * cross_divergence).sum(),
            (weights * in_view).sum(),
            (weights * cross_view).sum(),
        )

    def loss_terms(self, interaction):
        """The three weighted loss terms, summed over all T steps.

        Returns:
            dict: ``cd`` (cross-divergence), ``in_view`` and ``cross_view``
            (InfoNCE), scalars; ``calculate_loss`` is
            ``cd + cl_weight * (in_view + cross_view)``.
        """
        item_seq = interaction[self.ITEM_SEQ]  # [B L]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]  # [B]
        targets = interaction[self.TARGET_SEQ]  # [B L], 0 at padding
        batch, length = item_seq.shape
        target_real = targets > 0  # [B L]
        negatives = self.sample_negatives(item_seq, targets)  # [B L]
        aug_seq, aug_len, offset = self.augment(item_seq, item_seq_len)

        # Target tokens: every position with a real target. Position n pairs
        # with position n - offset of the augmented view where that exists.
        batch_index, position_index = target_real.nonzero(as_tuple=True)  # [N]
        aug_position = position_index - offset[batch_index]  # [N]
        pair_mask = (aug_position >= 0) & (aug_position < aug_len[batch_index])
        tokens = (
            torch.cat([batch_index, batch + batch_index[pair_mask]]),
            torch.cat([position_index, aug_position[pair_mask]]),
        )  # [N + M] rows of cat(seq, aug) and their positions

        both_views = torch.cat([item_seq, aug_seq], dim=0)  # [2B L]
        context = self.encode(both_views)  # [2B L H], one encoder call
        real = both_views != 0
        x0 = self.item_embedding(targets[target_real])  # [N H]
        negative_emb = self.item_embedding(negatives[target_real])  # [N H]

        all_steps = torch.arange(self.num_steps, device=item_seq.device)
        chunks = all_steps.split(self.step_chunk_size)
        totals = [0.0, 0.0, 0.0]
        for steps in chunks:
            args = (context, real, tokens, x0, negative_emb, pair_mask, steps)
            if len(chunks) > 1 and torch.is_grad_enabled():
                # Recompute the chunk in backward: memory of one chunk, not T.
                losses = checkpoint(self._step_losses, *args, use_reentrant=False)
            else:
                losses = self._step_losses(*args)
            totals = [total + loss for total, loss in zip(totals, losses)]
        return dict(zip(("cd", "in_view", "cross_view"), totals))

    def calculate_loss(self, interaction):
        terms = self.loss_terms(interaction)
        return terms["cd"] + self.cl_weight * (terms["in_view"] + terms["cross_view"])

    # ------------------------------------------------------------------ #
    # inference
    # ------------------------------------------------------------------ #
    def _scores(self, preference, items):
        """``preference`` [B H] against ``items`` [..., H] by ``score``."""
        if self.score == "cos":
            preference = F.normalize(preference, dim=-1)
            items = F.normalize(items, dim=-1)
        return preference, items

    def predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        test_item = interaction[self.ITEM_ID]
        preference = self.forward(item_seq, item_seq_len)  # [B H]
        preference, item_emb = self._scores(
            preference, self.item_embedding(test_item)
        )  # [B H], [B H]
        return (preference * item_emb).sum(dim=-1)  # [B]

    def full_sort_predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        preference = self.forward(item_seq, item_seq_len)  # [B H]
        preference, item_emb = self._scores(preference, self.item_embedding.weight)
        return torch.matmul(preference, item_emb.transpose(0, 1))  # [B N]
