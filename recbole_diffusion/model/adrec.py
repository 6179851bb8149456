"""
ADRec
#####

Auto-regressive diffusion over the whole target sequence. A causal attention
module (CAM) turns the history into one guidance state per position,
``c = CAM(LayerNorm(Dropout(E[seq])))``. Every target token (the next item at
every position) is noised with its own diffusion step, ``t: [B, L]``, and an
auto-regressive diffusion module (ADM, causal too) reconstructs all of them at
once from ``z = c + lambda (x_t + d_t)``. The loss is cross-entropy of
``x0_hat . E^T`` at every real position plus the MSE between ``x0_hat`` and the
clean embeddings.

At inference only the last token is denoised: the history positions carry
their clean next-item embeddings with ``t = 0`` and the last position runs the
reverse chain from ``N(0, I)``. Both modules are causal, so the history's part
of every reverse step is the same: the CAM states and the ADM's per-layer
keys and values of the history are computed once, and each step runs one
token through the ADM (``inference_cache: False`` recomputes the whole
sequence at every step instead; the scores are the same).

Training runs in three stages (pre-training, warm-up with the embedding
frozen, joint training); :class:`~recbole_diffusion.trainer.ADRecTrainer`
runs them and sets :attr:`ADRec.stage`, which selects the loss and the
scoring (stage 1 is a SASRec-like causal model without positional embedding,
scored with ``c . E^T`` at the last position).

What the noised target adds, at the paper's ``lambda_scale`` 0.001: very
little. The ADM's input is ``c + 0.001 (x_t + d_t)``, so the denoised output
barely depends on ``x_t`` and the number of reverse steps barely matters.
Measured on ml-100k under the ``converged`` protocol
(``benchmarks/results/ml-100k.converged.md``, L 20, H 64, seeds 2020-2022):
``ADRec-Lambda0`` (lambda 0) reached test NDCG@10 0.0626 +- 0.0043 against
ADRec's 0.0628 +- 0.0044 (paired t-test, two-sided p 0.27); 1, 4 and 32
reverse steps gave 0.0628, 0.0629 and 0.0628; a larger lambda did not help
(0.01: 0.0618, 0.1: 0.0610, 1: 0.0599).

Reference:
    "Unlocking the Power of Diffusion Models in Sequential Recommendation: A
    Simple and Effective Approach." KDD 2025 (arXiv:2505.19544).

Reference code:
    https://github.com/Nemo-1024/ADRec

Deviations:
    - RecBole pads on the right: the last token sits at ``item_seq_len - 1``
      (the reference pads on the left and reads position -1). With right
      padding the causal mask alone keeps real positions from attending to
      padding, so no key padding mask is needed; each batch is cut to its
      longest real sequence (same result, less work).
    - Stage 2 freezes the item embedding truly: it is left out of the
      optimizer and gets no gradient, so weight decay cannot move it either
      (the reference code excludes it from the gradient only, and Adam's
      weight decay still shrinks it).
    - The optimizer (Adam, fresh state) and the cosine annealing of the
      learning rate restart at each stage, the cosine running over the
      stage's maximum number of epochs; stage 2 runs all its epochs, stages 1
      and 3 stop early on validation. Stage 2 starts from the best stage-1
      model (embedding and CAM), stage 3 from the best stage-2 model.
    - The final model is the better, on validation, of the best stage-2 and
      best stage-3 checkpoints (stage 3 nearly always); the paper does not say.
    - The padding row of the item table starts at zero and gets no gradient
      through the history lookup (``padding_idx=0``, RecBole's convention); it
      stays a column of the CE softmax, as in RecBole's SASRec.
    - The per-token MSE is the mean over the H channels (improved-diffusion's
      ``mean_flat``), then averaged over each sequence's real tokens and over
      the batch.
    - All Linear weights are Xavier-normal with zero biases (as in DiffuRec,
      on which the reference code builds). Item embeddings start at
      N(0, ``embedding_init_std``^2), default 0.02, the initialisation of
      SASRec, which stage 1 is (the paper gives none). At unit scale, the
      scale of the diffusion noise, stage 1 barely learns: the logits
      ``c . E^T`` start with a spread of about sqrt(H), the CE stays near log N,
      and on ml-100k (the benchmark's cpu protocol, seed 2020) validation
      NDCG@10 after stage 1 was 0.0251 at std 1 against 0.0637 at std 0.02,
      test NDCG@10 of the final model 0.0338 against 0.0554.
    - The feed-forward's activation is torch's exact (erf) GELU by default
      (``hidden_act: gelu``); the reference code uses the tanh approximation,
      ``hidden_act: gelu_tanh`` here. With copied weights and injected noise
      the scores differ by up to 2.2e-3 with the exact form and 3.1e-6 with
      the tanh form (``benchmarks/results/parity.md``); the benchmark tables
      were made with the exact form, so it stays the default.
    - ``inference_steps`` < T respaces the reverse chain (Nichol & Dhariwal):
      an option, not in the paper.
    - On ml-100k, not a dataset of the paper, ``props/ADRec/ml-100k.yaml``
      sets batch 64 and ``train_windows: all`` instead of batch 512 and the
      last window: 943 users at batch 512 would be 2 optimizer steps an
      epoch; every window of a longer history at batch 64 gives about 40, as
      the paper's batch 512 does on Beauty (22,363 users).
    - Stage 1's optimizer holds only what stage 1 trains (item embedding,
      its LayerNorm and the CAM), so weight decay does not touch the ADM
      before it is trained (under DDP it would see zero gradients).
"""

import functools
import os

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_diffusion.data import TARGET_LIST_PREFIX
from recbole_diffusion.diffusion import (
    BETA_SCHEDULES,
    GaussianDiffusion,
    StepEmbedding,
    get_beta_schedule,
    respaced_steps,
)
from recbole_diffusion.fast_layers import attention, use_fast_layers
from recbole_diffusion.utils import (
    ConfigError,
    check_choice,
    check_heads_divide_hidden,
    check_lr_schedule,
    check_non_negative,
    check_positive_int,
    check_probability,
    config_value,
)

__all__ = [
    "ADRec",
    "ACTIVATIONS",
    "CausalBlock",
    "CausalSelfAttention",
    "CausalTransformer",
    "STAGES",
]

# 1: pre-training (CE on the CAM), 2: warm-up (full loss, embedding frozen),
# 3: joint training (full loss).
STAGES = (1, 2, 3)
ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": functools.partial(nn.GELU, approximate="tanh"),
    "relu": nn.ReLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def _check_non_negative_int(config, key):
    value = config_value(config, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"{key}={value!r} is invalid: it must be an integer >= 0 "
            f"(0 skips the stage; set e.g. --{key}=5)."
        )
    return value


# --------------------------------------------------------------------------- #
# causal Transformer blocks with a key/value cache
# --------------------------------------------------------------------------- #
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention that can also run one cached token.

    :meth:`forward` attends over a whole sequence with a causal mask and
    returns the keys and values it computed; :meth:`step` runs one new token
    per row against such cached keys and values.
    """

    def __init__(self, hidden_size, n_heads, attn_dropout_prob):
        super().__init__()
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.attn_dropout_prob = attn_dropout_prob
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)
        # set by use_fast_layers: attention dropout through fast_dropout
        self.fast_attention_dropout = False
        # one product for q, k and v (config fused_qkv; False: three)
        self.fused_projection = True

    def _merge_heads(self, x):
        batch, _, length, _ = x.shape
        return x.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_size)

    def _dropout_p(self):
        return self.attn_dropout_prob if self.training else 0.0

    def _project(self, hidden):
        """Queries, keys and values [B heads L H/heads] of ``hidden`` [B L H].

        One matrix product with the three weights stacked, not three: at the
        benchmarks' sizes ([320 64] by [64 64]) each product costs more in
        calls than in arithmetic (5% of ADRec's training step, measured). The
        parameters stay three Linear layers (same state dict).
        """
        batch, length, _ = hidden.shape
        if not self.fused_projection:
            return tuple(
                layer(hidden)
                .view(batch, length, self.n_heads, self.head_size)
                .transpose(1, 2)
                for layer in (self.query, self.key, self.value)
            )
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        projected = F.linear(hidden, weight, bias)  # [B L 3H]
        projected = projected.view(batch, length, 3, self.n_heads, self.head_size)
        return projected.permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, hidden):
        """[B L H] -> (output [B L H], (keys, values) each [B heads L H/heads])."""
        q, k, v = self._project(hidden)  # each [B heads L H/heads]
        # written out where the dropout is fast_dropout (inside SDPA it is
        # torch's bernoulli_); SDPA otherwise
        attended = attention(
            q,
            k,
            v,
            dropout_p=self._dropout_p(),
            fast=self.fast_attention_dropout,
            is_causal=True,
        )  # [B heads L H/heads]
        return self.output(self._merge_heads(attended)), (k, v)

    def step(self, hidden, past_keys, past_values, past_allowed):
        """One new token per row against cached keys and values.

        Args:
            hidden: [B 1 H], the new token.
            past_keys, past_values: [B heads L H/heads] from :meth:`forward`.
            past_allowed: [B L] bool, True at the cached positions the row's
                new token may attend to (its history); the token always
                attends to itself.
        """
        q, k, v = self._project(hidden)  # each [B heads 1 H/heads]
        keys = torch.cat([past_keys, k], dim=2)  # [B heads L+1 H/heads]
        values = torch.cat([past_values, v], dim=2)
        itself = past_allowed.new_ones(past_allowed.shape[0], 1)
        allowed = torch.cat([past_allowed, itself], dim=1)[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=allowed, dropout_p=self._dropout_p()
        )  # [B heads 1 H/heads]
        return self.output(self._merge_heads(attended))


class CausalBlock(nn.Module):
    """Post-LN Transformer block (SASRec's layout) with causal self-attention.

    ``h = LN(x + Drop(Attn(x)))``, ``out = LN(h + Drop(FFN(h)))``, FFN
    ``Linear(H, inner) - act - Linear(inner, H)``.
    """

    def __init__(
        self,
        hidden_size,
        n_heads,
        inner_size,
        hidden_dropout_prob,
        attn_dropout_prob,
        hidden_act,
        layer_norm_eps,
    ):
        super().__init__()
        self.attention = CausalSelfAttention(hidden_size, n_heads, attn_dropout_prob)
        self.attention_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, inner_size),
            ACTIVATIONS[hidden_act](),
            nn.Linear(inner_size, hidden_size),
        )
        self.feed_forward_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)

    def _finish(self, hidden, attended):
        hidden = self.attention_norm(hidden + self.dropout(attended))
        return self.feed_forward_norm(hidden + self.dropout(self.feed_forward(hidden)))

    def forward(self, hidden):
        """[B L H] -> ([B L H], this block's (keys, values))."""
        attended, cache = self.attention(hidden)
        return self._finish(hidden, attended), cache

    def step(self, hidden, cache, past_allowed):
        """[B 1 H] -> [B 1 H], attending to ``cache`` where ``past_allowed``."""
        return self._finish(hidden, self.attention.step(hidden, *cache, past_allowed))


class CausalTransformer(nn.Module):
    """A stack of :class:`CausalBlock` with a full and a cached one-token pass."""

    def __init__(self, n_layers, **block_args):
        super().__init__()
        self.blocks = nn.ModuleList(CausalBlock(**block_args) for _ in range(n_layers))

    def forward(self, hidden):
        """[B L H] -> (output [B L H], per-block (keys, values) cache)."""
        cache = []
        for block in self.blocks:
            hidden, block_cache = block(hidden)
            cache.append(block_cache)
        return hidden, cache

    def step(self, hidden, cache, past_allowed):
        """One token per row, [B 1 H] -> [B 1 H], on a cache from :meth:`forward`."""
        for block, block_cache in zip(self.blocks, cache):
            hidden = block.step(hidden, block_cache, past_allowed)
        return hidden


# --------------------------------------------------------------------------- #
# the model
# --------------------------------------------------------------------------- #
class ADRec(SequentialRecommender):
    r"""ADRec: token-level diffusion with causal attention, three-stage training.

    Config (see ``props/ADRec.yaml``): ``cam_layers`` / ``adm_layers`` blocks,
    ``lambda_scale`` (lambda), ``ce_weight`` / ``mse_weight``, the stage
    lengths ``pretrain_epochs`` / ``warmup_epochs`` / ``epochs``,
    ``pretrained_embedding``, ``inference_steps`` and ``inference_cache``.

    Randomness at inference (the reverse chain's noise) comes from torch's
    global generator on the model's device: ``predict`` and
    ``full_sort_predict`` called after the same ``torch.manual_seed`` return
    the same scores, cached or not.
    """

    input_type = InputType.POINTWISE
    # Epoch budgets of the stages before the last (whose budget is ``epochs``):
    # a user's --epochs=N caps them too, unless they are given as well.
    stage_epoch_keys = ("pretrain_epochs", "warmup_epochs")

    @classmethod
    def validate_config(cls, config):
        """Refuse hyperparameters that cannot work, before any data is loaded.

        Raises:
            ConfigError: the message names the key and what to set instead.
        """
        for key in (
            "hidden_size",
            "n_heads",
            "inner_size",
            "cam_layers",
            "adm_layers",
            "diffusion_steps",
            "epochs",
        ):
            check_positive_int(config, key)
        check_heads_divide_hidden(config)
        for key in ("hidden_dropout_prob", "attn_dropout_prob", "emb_dropout_prob"):
            check_probability(config, key)
        for key in ("lambda_scale", "ce_weight", "mse_weight", "layer_norm_eps"):
            check_non_negative(config, key)
        if not check_non_negative(config, "embedding_init_std"):
            raise ConfigError(
                "embedding_init_std=0 is invalid: every item would start with the "
                "same embedding (set e.g. --embedding_init_std=0.02)."
            )
        if config["ce_weight"] + config["mse_weight"] <= 0:
            raise ConfigError(
                "ce_weight and mse_weight are both 0: nothing would be trained "
                "(the paper uses ce_weight=0.5, mse_weight=0.5)."
            )
        for key in ("pretrain_epochs", "warmup_epochs"):
            _check_non_negative_int(config, key)
        check_choice(config, "noise_schedule", BETA_SCHEDULES)
        check_choice(config, "hidden_act", list(ACTIVATIONS))
        check_lr_schedule(config)
        check_choice(config, "inference_cache", [True, False])
        check_choice(config, "loss_type", ["CE"])
        get_beta_schedule(
            config["noise_schedule"],
            config["diffusion_steps"],
            config_value(config, "beta_start"),
            config_value(config, "beta_end"),
        )
        inference_steps = config_value(config, "inference_steps")
        if inference_steps is not None:
            respaced_steps(config["diffusion_steps"], inference_steps)
        pretrained = config_value(config, "pretrained_embedding")
        if pretrained is not None and (
            not isinstance(pretrained, str) or not os.path.isfile(pretrained)
        ):
            raise ConfigError(
                f"pretrained_embedding={pretrained!r} is not a file: give the "
                "path of a stage-1 checkpoint (<model file>-stage1.pth) or of "
                "a saved [n_items, hidden_size] tensor, or ~ to pre-train."
            )

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.validate_config(config)

        # load parameters info
        self.hidden_size = config["hidden_size"]
        self.n_heads = config["n_heads"]
        self.inner_size = config["inner_size"]
        self.cam_layers = config["cam_layers"]
        self.adm_layers = config["adm_layers"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.emb_dropout_prob = config["emb_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.diffusion_steps = config["diffusion_steps"]
        self.noise_schedule = config["noise_schedule"]
        self.lambda_scale = config["lambda_scale"]
        self.embedding_init_std = config_value(config, "embedding_init_std", 0.02)
        self.ce_weight = config["ce_weight"]
        self.mse_weight = config["mse_weight"]
        self.inference_steps = config_value(config, "inference_steps")
        self.inference_cache = config["inference_cache"]
        self.target_list_field = TARGET_LIST_PREFIX + self.ITEM_SEQ
        # Set by ADRecTrainer; saved in checkpoints (other_parameter) so a
        # loaded stage-1 checkpoint scores as the CAM it is.
        self.stage = STAGES[-1]
        self.other_parameter_name = ["stage"]

        # define layers and loss
        self.item_embedding = nn.Embedding(
            self.n_items, self.hidden_size, padding_idx=0
        )
        self.embedding_dropout = nn.Dropout(self.emb_dropout_prob)
        self.embedding_norm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        block_args = {
            "hidden_size": self.hidden_size,
            "n_heads": self.n_heads,
            "inner_size": self.inner_size,
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "attn_dropout_prob": self.attn_dropout_prob,
            "hidden_act": self.hidden_act,
            "layer_norm_eps": self.layer_norm_eps,
        }
        self.cam = CausalTransformer(self.cam_layers, **block_args)
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
        self.adm = CausalTransformer(self.adm_layers, **block_args)
        self.loss_fct = nn.CrossEntropyLoss()

        # parameters initialization
        self.apply(self._init_weights)

        # cheaper dropout masks, GELU and cross-entropy on the CPU, same maths
        # (fast_dropout, fast_gelu, fast_cross_entropy; see
        # recbole_diffusion.fast_layers)
        use_fast_layers(self, config)
        fused_qkv = bool(config_value(config, "fused_qkv", True))
        for module in self.modules():
            if isinstance(module, CausalSelfAttention):
                module.fused_projection = fused_qkv

    def _init_weights(self, module):
        if isinstance(module, nn.Embedding):
            # SASRec's scale: stage 1 is SASRec-like (see Deviations)
            nn.init.normal_(module.weight, mean=0.0, std=self.embedding_init_std)
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
    @staticmethod
    def _cut(item_seq, item_seq_len):
        """Cut right-padded rows to the batch's longest sequence.

        Returns ``(item_seq [B L'], real [B L'] True at real positions)``.
        """
        longest = int(item_seq_len.max())
        item_seq = item_seq[:, :longest]
        positions = torch.arange(longest, device=item_seq.device)
        return item_seq, positions.unsqueeze(0) < item_seq_len.unsqueeze(1)

    def condition(self, item_seq):
        """The CAM's guidance ``c`` [B L H] for items ``item_seq`` [B L]."""
        history = self.embedding_norm(
            self.embedding_dropout(self.item_embedding(item_seq))
        )  # [B L H]
        return self.cam(history)[0]

    def aggregate(self, guidance, x_t, t):
        """``z = c + lambda (x_t + d_t)``; ``x_t`` [B L H], ``t`` [B L] -> [B L H]."""
        return guidance + self.lambda_scale * (x_t + self.step_embedding(t))

    def denoise(self, guidance, x_t, t):
        """The ADM: x0_hat [B L H] for every token, each with its own step."""
        return self.adm(self.aggregate(guidance, x_t, t))[0]

    def target_items(self, interaction):
        """The next item at every position, [B L] (0 at padding).

        Training batches of :class:`~recbole_diffusion.data.WholeSequenceDataset`
        carry it; for any other row (RecBole's augmented prefixes, evaluation
        rows) it is the shifted sequence followed by the row's target.
        """
        if self.target_list_field in interaction:
            return interaction[self.target_list_field]
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        targets = torch.zeros_like(item_seq)
        targets[:, :-1] = item_seq[:, 1:]
        rows = torch.arange(item_seq.shape[0], device=item_seq.device)
        targets[rows, item_seq_len - 1] = interaction[self.POS_ITEM_ID]
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        targets[positions.unsqueeze(0) >= item_seq_len.unsqueeze(1)] = 0
        return targets

    # ------------------------------------------------------------------ #
    # training
    # ------------------------------------------------------------------ #
    def calculate_loss(self, interaction):
        """Stage 1: CE of ``c . E^T``; later: ``(ce_weight CE, mse_weight MSE)``.

        Both at every real position of every sequence. The pair is returned
        so that the trainer logs the two terms (it sums them).
        """
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        item_seq, real = self._cut(interaction[self.ITEM_SEQ], item_seq_len)
        targets = self.target_items(interaction)[:, : item_seq.shape[1]]  # [B L]
        guidance = self.condition(item_seq)  # [B L H]
        if self.stage == 1:
            logits = guidance[real] @ self.item_embedding.weight.t()  # [R N]
            return self.loss_fct(logits, targets[real])

        x0 = self.item_embedding(targets)  # [B L H]
        t = self.diffusion.sample_timesteps(targets.shape, targets.device)
        t = t * real  # [B L], t = 0 at padding
        x_t = self.diffusion.q_sample(x0, t)
        x0_hat = self.denoise(guidance, x_t, t)  # [B L H]
        logits = x0_hat[real] @ self.item_embedding.weight.t()  # [R N]
        ce = self.loss_fct(logits, targets[real])
        token_mse = (x0_hat - x0).pow(2).mean(-1)  # [B L]
        real_float = real.to(token_mse.dtype)
        sequence_mse = (token_mse * real_float).sum(1) / real_float.sum(1)  # [B]
        return self.ce_weight * ce, self.mse_weight * sequence_mse.mean()

    # ------------------------------------------------------------------ #
    # inference
    # ------------------------------------------------------------------ #
    def forward(self, item_seq, item_seq_len):
        """The representation scored against every item, [B H].

        Stage 1: the CAM state at the last position. Otherwise: x0_hat of the
        last token after the reverse chain, the history held clean (t = 0).
        """
        item_seq, _ = self._cut(item_seq, item_seq_len)
        last = item_seq_len - 1  # [B]
        if self.stage == 1:
            return self.gather_indexes(self.condition(item_seq), last)

        length = item_seq.shape[1]
        positions = torch.arange(length, device=item_seq.device).unsqueeze(0)
        history = positions < last.unsqueeze(1)  # [B L], positions before the last
        next_items = torch.zeros_like(item_seq)
        next_items[:, :-1] = item_seq[:, 1:]
        next_items = next_items * history  # [B L], 0 from the last position on
        history_x = self.item_embedding(next_items)  # [B L H], clean, t = 0
        if self.inference_cache:
            denoise = self._cached_denoiser(item_seq, history_x, history, last)
        else:
            denoise = self._uncached_denoiser(item_seq, history_x, positions, last)
        x0_hat, _ = self.diffusion.sample(
            denoise,
            (item_seq.shape[0], self.hidden_size),
            item_seq.device,
            inference_steps=self.inference_steps,
        )
        return x0_hat

    def _cached_denoiser(self, item_seq, history_x, history, last):
        """Compute the history once; each step then runs one token per row."""
        guidance = self.condition(item_seq)  # [B L H]
        zero_steps = torch.zeros_like(item_seq)
        # Positions from the last one on hold zeros here; the cache is only
        # read where ``history`` is True.
        _, cache = self.adm(self.aggregate(guidance, history_x, zero_steps))
        last_guidance = self.gather_indexes(guidance, last).unsqueeze(1)  # [B 1 H]

        def denoise(x_t, t):  # x_t [B H], t [B]
            z = self.aggregate(last_guidance, x_t.unsqueeze(1), t.unsqueeze(1))
            return self.adm.step(z, cache, history).squeeze(1)  # [B H]

        return denoise

    def _uncached_denoiser(self, item_seq, history_x, positions, last):
        """Recompute CAM and ADM over the whole sequence at every step."""
        is_last = positions == last.unsqueeze(1)  # [B L]

        def denoise(x_t, t):  # x_t [B H], t [B]
            guidance = self.condition(item_seq)  # [B L H]
            x = torch.where(is_last.unsqueeze(-1), x_t.unsqueeze(1), history_x)
            steps = torch.where(is_last, t.unsqueeze(1), torch.zeros_like(item_seq))
            return self.gather_indexes(self.denoise(guidance, x, steps), last)

        return denoise

    def predict(self, interaction):
        representation = self.forward(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        )  # [B H]
        test_items = self.item_embedding(interaction[self.ITEM_ID])  # [B H]
        return (representation * test_items).sum(-1)  # [B]

    def full_sort_predict(self, interaction):
        representation = self.forward(
            interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        )  # [B H]
        return representation @ self.item_embedding.weight.t()  # [B N]
