"""
DiffuRec
########

The target item's embedding is diffused into a Gaussian; a bidirectional
Transformer (the approximator) reconstructs it from the user's history, which
the noisy target ``x_t`` conditions through ``z_i = e_i + lambda_i (x_t + d_t)``
with a random ``lambda ~ N(delta, delta)`` redrawn at every call. Training
scores the reconstruction ``x0_hat`` against every item with cross-entropy;
inference runs the reverse chain from pure noise and ranks items by
``x0_hat . E^T``.

The same class also runs DiffuRecSys's two changes (cross-attention
conditioning, offset noise), its ensemble inference and a respaced (shorter)
reverse chain, all switched by config; :class:`DiffuRecSys` only changes the
defaults.

Randomness at inference (``lambda`` and the reverse chain's noise) is drawn
from torch's global generator on the model's device, which RecBole's
``init_seed`` seeds: a run is reproducible under its ``seed``, and
``predict`` / ``full_sort_predict`` called after the same ``torch.manual_seed``
return the same scores.

What the noised target adds, at the papers' ``lambda_uncertainty`` 0.001:
very little. ``lambda ~ N(0.001, 0.001)`` scales ``x_t + d_t`` to about a
thousandth of the unit-scale history embeddings, so x0_hat barely depends on
``x_t``, and whatever acts on ``x_t`` (the number of reverse steps, offset
noise, ensembles) barely moves the metrics. Measured on ml-100k under the
``converged`` protocol (``benchmarks/results/ml-100k.converged.md``, L 20,
H 64): ``DiffuRec-Lambda0`` (lambda 0, no noised target at all) reached test
NDCG@10 0.0534 against DiffuRec's 0.0559 on the same seed (2020); the trained
DiffuRec scored 0.0527, 0.0532 and 0.0532 with 1, 4 and 32 reverse steps
(seeds 2020-2021), and ``inference_steps: 4`` ranks about 8x more users per
second than the full chain of 32.

Reference:
    Zihao Li, Aixin Sun, Chenliang Li. "DiffuRec: A Diffusion Model for
    Sequential Recommendation." ACM TOIS 42(3), 2023.

Reference code:
    https://github.com/WHUIR/DiffuRec (src/diffurec.py, src/model.py)

Deviations:
    - The approximator's attention masks padded *keys*; the reference code
      masks padded *queries* only, so real positions attend to padding (and
      its left padding then leaks into x0_hat). With key masks an output
      does not depend on how much padding a batch carries.
    - RecBole pads on the right: x0_hat is read at ``item_seq_len - 1``, not
      at position -1 as in the left-padded reference code. Each batch is cut
      to its longest real sequence before the Transformer: under the key
      masks, and with lambda drawn at the padded width, the scores are those
      of the untrimmed model (in training only the dropout draws differ, as
      their shapes do), for less work.
    - The padding row of the item table starts at zero and gets no gradient
      through the history lookup (``padding_idx=0``, RecBole's convention);
      like RecBole's SASRec (and the reference code) it stays a column of the
      CE softmax. The reference trains a random row 0 that real positions
      attend to.
    - ``LayerNorm(Dropout(h))`` is applied to the gathered last position only
      (position-wise, so the value is the same; dropout draws differ).
    - All Linear weights are Xavier-normal with zero biases (the paper's
      "Xavier initialization"; the reference code does it for some layers
      and leaves torch's defaults for the others).
    - ``inference_steps`` < T respaces the reverse chain (Nichol & Dhariwal);
      an option, not in the paper. The kept steps are evenly spaced and
      always include T-1 and 0; a one-step chain keeps T-1 (improved
      diffusion's ``space_timesteps`` would keep step 0, which starts the
      chain from noise that the model was never trained to denoise). ``ensemble_size`` > 1 is DiffuRecSys's
      Algorithm 3, also available here.
"""

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_diffusion.diffusion import (
    BETA_SCHEDULES,
    GaussianDiffusion,
    StepEmbedding,
    get_beta_schedule,
    respaced_steps,
)
from recbole_diffusion.fast_layers import attention, dropout_part, use_fast_layers
from recbole_diffusion.utils import (
    check_choice,
    check_heads_divide_hidden,
    check_non_negative,
    check_positive_int,
    check_probability,
    config_value,
)

__all__ = ["CONDITIONINGS", "DiffuRec", "MultiHeadAttention", "TransformerBlock"]

CONDITIONINGS = ("sum", "cross_attention")


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention with a key padding mask."""

    # set by use_fast_layers: attention dropout through fast_dropout on the CPU
    fast_attention_dropout = False

    def __init__(self, hidden_size, n_heads, attn_dropout_prob):
        super().__init__()
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.attn_dropout_prob = attn_dropout_prob
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, x):
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_size).transpose(1, 2)

    def forward(self, query, key, value, key_padding_mask, dropout_whole=None):
        """``query`` [B Lq H], ``key``/``value`` [B Lk H], mask [B Lk] True at pads.

        ``dropout_whole``: the attention weights' ``whole`` for
        :func:`~recbole_diffusion.fast_layers.fast_dropout` when ``query`` is a
        part of a longer query sequence.
        """
        batch, query_length, hidden = query.shape
        q = self._split_heads(self.query(query))  # [B heads Lq H/heads]
        k = self._split_heads(self.key(key))  # [B heads Lk H/heads]
        v = self._split_heads(self.value(value))  # [B heads Lk H/heads]
        allowed = ~key_padding_mask[:, None, None, :]  # [B 1 1 Lk]
        attended = attention(
            q,
            k,
            v,
            attn_mask=allowed,
            dropout_p=self.attn_dropout_prob if self.training else 0.0,
            fast=self.fast_attention_dropout,
            dropout_whole=dropout_whole,
        )  # [B heads Lq H/heads]
        attended = attended.transpose(1, 2).reshape(batch, query_length, hidden)
        return self.output(attended)


class TransformerBlock(nn.Module):
    """DiffuRec's pre-LN block: ``x + Drop(Attn(LN(x)))``, ``x + Drop(FFN(LN(x)))``.

    Bidirectional self-attention with a key padding mask; FFN of width 4H with
    (tanh) GELU; the reference also applies dropout to the block's output.
    """

    def __init__(
        self, hidden_size, n_heads, hidden_dropout_prob, attn_dropout_prob, eps
    ):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.attention = MultiHeadAttention(hidden_size, n_heads, attn_dropout_prob)
        self.feed_forward_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size),
            nn.GELU(approximate="tanh"),
            nn.Dropout(hidden_dropout_prob),
            nn.Linear(4 * hidden_size, hidden_size),
        )
        self.dropout = nn.Dropout(hidden_dropout_prob)

    def forward(self, hidden, key_padding_mask):
        normed = self.attention_norm(hidden)
        hidden = hidden + self.dropout(
            self.attention(normed, normed, normed, key_padding_mask)
        )
        hidden = hidden + self.dropout(
            self.feed_forward(self.feed_forward_norm(hidden))
        )
        return self.dropout(hidden)

    def forward_at(self, hidden, key_padding_mask, index):
        """``forward(hidden, key_padding_mask)[b, index[b]]``, [B H], computing
        past the keys and values only that one position of each row.

        A block's positions meet only in its attention, whose keys and values
        are the block's input: the output at one position needs the others'
        keys and values and nothing else of them. Each dropout draws the mask
        of the whole block's tensor and takes that position's part
        (:func:`~recbole_diffusion.fast_layers.dropout_part`), so the random
        stream, and with it every later draw, is the full block's.
        """
        batch, length, hidden_size = hidden.shape
        rows = torch.arange(batch, device=hidden.device)

        def at_index(whole):  # [B L ...] -> [B ...]
            return whole[rows, index]

        def attention_at_index(weights):  # [B heads L L] -> [B heads 1 L]
            return weights[rows, :, index].unsqueeze(2)

        normed = self.attention_norm(hidden)  # [B L H]
        heads = self.attention.n_heads
        attended = self.attention(
            at_index(normed).unsqueeze(1),
            normed,
            normed,
            key_padding_mask,
            dropout_whole=((batch, heads, length, length), attention_at_index),
        ).squeeze(1)  # [B H]
        output = at_index(hidden) + dropout_part(
            self.dropout, attended, (hidden.shape, at_index)
        )  # [B H]
        expand, activation, inner_dropout, contract = self.feed_forward
        inner = activation(expand(self.feed_forward_norm(output)))  # [B 4H]
        inner = dropout_part(
            inner_dropout, inner, ((batch, length, inner.shape[-1]), at_index)
        )
        output = output + dropout_part(
            self.dropout, contract(inner), (hidden.shape, at_index)
        )
        return dropout_part(self.dropout, output, (hidden.shape, at_index))


class DiffuRec(SequentialRecommender):
    r"""DiffuRec: diffusion over the next item's embedding, CE loss on x0_hat.

    Config switches (see ``props/DiffuRec.yaml``): ``conditioning`` ``sum``
    (DiffuRec, Eq. 15 of DiffuRecSys) or ``cross_attention`` (DiffuRecSys
    Eq. 16); ``offset_noise`` (DiffuRecSys Eq. 17, 0 disables);
    ``ensemble_size`` (Algorithm 3); ``inference_steps`` (respaced chain).
    """

    input_type = InputType.POINTWISE
    # Cut batches to their longest real sequence before the Transformer; the
    # key padding masks make this exact. Benchmarks turn it off to measure it.
    trim_padding = True

    @classmethod
    def validate_config(cls, config):
        """Refuse hyperparameters that cannot work, before any data is loaded.

        Raises:
            ConfigError: the message names the key and what to set instead.
        """
        for key in (
            "hidden_size",
            "n_layers",
            "n_heads",
            "diffusion_steps",
            "ensemble_size",
        ):
            check_positive_int(config, key)
        check_heads_divide_hidden(config)
        for key in ("hidden_dropout_prob", "attn_dropout_prob", "emb_dropout_prob"):
            check_probability(config, key)
        for key in ("lambda_uncertainty", "offset_noise", "layer_norm_eps"):
            check_non_negative(config, key)
        check_choice(config, "noise_schedule", BETA_SCHEDULES)
        check_choice(config, "conditioning", CONDITIONINGS)
        check_choice(config, "loss_type", ["CE"])
        # schedule ends and inference steps: the diffusion core says what is wrong
        get_beta_schedule(
            config["noise_schedule"],
            config["diffusion_steps"],
            config_value(config, "beta_start"),
            config_value(config, "beta_end"),
        )
        inference_steps = config_value(config, "inference_steps")
        if inference_steps is not None:
            respaced_steps(config["diffusion_steps"], inference_steps)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.validate_config(config)

        # load parameters info
        self.hidden_size = config["hidden_size"]
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.emb_dropout_prob = config["emb_dropout_prob"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.diffusion_steps = config["diffusion_steps"]
        self.noise_schedule = config["noise_schedule"]
        self.lambda_uncertainty = config["lambda_uncertainty"]  # delta
        self.conditioning = config["conditioning"]
        self.offset_noise = config["offset_noise"]
        self.ensemble_size = config["ensemble_size"]
        self.inference_steps = config_value(config, "inference_steps")
        # the last block computed at x0_hat's position only (same function)
        self.last_position_only = bool(config_value(config, "last_position_only", True))

        # define layers and loss
        self.item_embedding = nn.Embedding(
            self.n_items, self.hidden_size, padding_idx=0
        )
        self.embedding_dropout = nn.Dropout(self.emb_dropout_prob)
        self.embedding_norm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.diffusion = GaussianDiffusion(
            self.diffusion_steps,
            self.noise_schedule,
            config_value(config, "beta_start"),
            config_value(config, "beta_end"),
        )
        self.step_embedding = StepEmbedding(
            self.hidden_size,
            self.diffusion_steps,
            use_table=bool(config_value(config, "step_embedding_table", True)),
        )
        if self.conditioning == "cross_attention":
            self.cross_attention = MultiHeadAttention(
                self.hidden_size, self.n_heads, self.attn_dropout_prob
            )
        self.blocks = nn.ModuleList(
            TransformerBlock(
                self.hidden_size,
                self.n_heads,
                self.hidden_dropout_prob,
                self.attn_dropout_prob,
                self.layer_norm_eps,
            )
            for _ in range(self.n_layers)
        )
        self.output_dropout = nn.Dropout(self.hidden_dropout_prob)
        self.output_norm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.loss_fct = nn.CrossEntropyLoss()

        # parameters initialization
        self.apply(self._init_weights)

        # cheaper dropout masks, GELU and cross-entropy on the CPU, same maths
        # (fast_dropout, fast_gelu, fast_cross_entropy; see
        # recbole_diffusion.fast_layers)
        use_fast_layers(self, config)

    def _init_weights(self, module):
        if isinstance(module, nn.Embedding):
            # unit scale, the scale of the diffusion noise (RecBole's usual
            # N(0, 0.02) would drown the item signal in x_t)
            nn.init.normal_(module.weight, mean=0.0, std=1.0)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ #
    # building blocks
    # ------------------------------------------------------------------ #
    def encode_history(self, item_seq, item_seq_len):
        """History embeddings cut to the batch's longest sequence.

        Returns ``(history [B L' H], padding_mask [B L'] True at pads,
        last_index [B])`` with ``L' = item_seq_len.max()``.
        """
        longest = int(item_seq_len.max()) if self.trim_padding else item_seq.shape[1]
        item_seq = item_seq[:, :longest]  # [B L']
        history = self.embedding_norm(
            self.embedding_dropout(self.item_embedding(item_seq))
        )  # [B L' H]
        positions = torch.arange(longest, device=item_seq.device)
        padding_mask = positions.unsqueeze(0) >= item_seq_len.unsqueeze(1)  # [B L']
        return history, padding_mask, item_seq_len - 1

    def approximate(self, history, padding_mask, last_index, x_t, t):
        """The approximator f_theta: x0_hat [B H] from history and noisy target.

        ``x_t`` [B H], ``t`` [B] long steps in 0..T-1. ``lambda`` is drawn
        anew on every call.
        """
        guidance = x_t + self.step_embedding(t)  # [B H]
        batch, length, hidden = history.shape
        # Drawn at the padded width MAX_ITEM_LIST_LENGTH and cut to the
        # trimmed one, so that trimming consumes the same random numbers and
        # the trimmed model gives exactly the untrimmed model's output.
        drawn_length = max(self.max_seq_length, length)
        standard = torch.randn(
            batch, drawn_length, hidden, device=history.device, dtype=history.dtype
        )[:, :length]
        uncertainty = self.lambda_uncertainty * (1.0 + standard)
        # [B L H], lambda ~ N(delta, delta)
        conditioned = uncertainty * guidance.unsqueeze(1)  # [B L H]
        if self.conditioning == "sum":
            hidden = history + conditioned  # Eq. 15
        else:
            # Eq. 16: each position queries the history with its own
            # lambda_i * (x + d); keys and values are the history.
            hidden = history + self.cross_attention(
                conditioned, history, history, padding_mask
            )
        if self.last_position_only:
            # only x0_hat's position of the last block's output is read
            *leading, last = self.blocks
            for block in leading:
                hidden = block(hidden, padding_mask)  # [B L H]
            x0_hat = last.forward_at(hidden, padding_mask, last_index)  # [B H]
        else:
            for block in self.blocks:
                hidden = block(hidden, padding_mask)  # [B L H]
            x0_hat = self.gather_indexes(hidden, last_index)  # [B H]
        return self.output_norm(self.output_dropout(x0_hat))

    def training_noise(self, target):
        """Forward-process noise: N(0, I), plus DiffuRecSys's offset if enabled.

        The offset is ``offset_noise * delta_c`` with ``delta_c ~ N(0, 1)``
        drawn per sample and shared by all H channels (a random mean shift).
        """
        noise = torch.randn_like(target)  # [B H]
        if self.offset_noise > 0:
            noise = noise + self.offset_noise * torch.randn_like(target[:, :1])
        return noise

    # ------------------------------------------------------------------ #
    # RecBole interface
    # ------------------------------------------------------------------ #
    def forward(self, item_seq, item_seq_len):
        """Run the reverse chain for each row; returns the final x0_hat [B H]."""
        history, padding_mask, last_index = self.encode_history(item_seq, item_seq_len)

        def denoise(x_t, t):
            return self.approximate(history, padding_mask, last_index, x_t, t)

        x0_hat, _ = self.diffusion.sample(
            denoise,
            (item_seq.shape[0], self.hidden_size),
            item_seq.device,
            inference_steps=self.inference_steps,
        )
        return x0_hat

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]  # [B]
        history, padding_mask, last_index = self.encode_history(item_seq, item_seq_len)
        target_embedding = self.item_embedding(target)  # [B H]
        t = self.diffusion.sample_timesteps(target.shape, target.device)  # [B]
        x_t = self.diffusion.q_sample(
            target_embedding, t, self.training_noise(target_embedding)
        )
        x0_hat = self.approximate(history, padding_mask, last_index, x_t, t)
        logits = x0_hat @ self.item_embedding.weight.t()  # [B N]
        return self.loss_fct(logits, target)

    def _scores(self, interaction):
        """Scores of every item [B N]: logits for one chain, else log mean prob.

        With ``ensemble_size`` k > 1 the batch is repeated k times (chain j of
        row b sits at ``j * B + b``) and the k softmax vectors are averaged
        (Algorithm 3); the log of the average ranks like the average without
        underflowing to ties.
        """
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        chains = self.ensemble_size
        if chains > 1:
            item_seq = item_seq.repeat(chains, 1)  # [kB L]
            item_seq_len = item_seq_len.repeat(chains)  # [kB]
        x0_hat = self.forward(item_seq, item_seq_len)  # [kB H]
        logits = x0_hat @ self.item_embedding.weight.t()  # [kB N]
        if chains == 1:
            return logits
        log_probs = torch.log_softmax(logits, dim=-1).view(chains, -1, self.n_items)
        return torch.logsumexp(log_probs, dim=0) - torch.log(
            log_probs.new_tensor(float(chains))
        )  # [B N]

    def predict(self, interaction):
        # the ensemble's normaliser needs every item's logit anyway, and
        # sharing the path keeps predict == full_sort_predict under a seed
        scores = self._scores(interaction)  # [B N]
        test_item = interaction[self.ITEM_ID]  # [B]
        return scores.gather(1, test_item.unsqueeze(1)).squeeze(1)  # [B]

    def full_sort_predict(self, interaction):
        return self._scores(interaction)  # [B N]
