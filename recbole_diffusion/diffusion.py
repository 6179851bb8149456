"""Gaussian diffusion core shared by the plugin's diffusion recommenders.

One small object owns the noise schedule, the forward noising, the posterior
step and the reverse-process loop, in the spirit of diffusers'
``DDPMScheduler``; models hold a :class:`GaussianDiffusion` and call it rather
than re-deriving ``alpha_bar``. Nothing here knows about recommendation.

Notation: ``T`` steps indexed ``t = 0 .. T-1``; ``beta_t`` the noise schedule,
``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s`` and
``abar_{-1} = 1``.

Reference:
    Jonathan Ho, Ajay Jain, Pieter Abbeel. "Denoising Diffusion Probabilistic
    Models." NeurIPS 2020 (forward process, posterior, fixed variances).
    Alex Nichol, Prafulla Dhariwal. "Improved Denoising Diffusion
    Probabilistic Models." ICML 2021 (cosine schedule, respacing).

Reference code: DiffuRec (https://github.com/WHUIR/DiffuRec, ``diffurec.py``),
itself derived from OpenAI's improved-diffusion (``gaussian_diffusion.py``,
``respace.py``).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recbole_diffusion.utils import ConfigError

__all__ = [
    "BETA_SCHEDULES",
    "GaussianDiffusion",
    "StepEmbedding",
    "get_beta_schedule",
    "respaced_steps",
    "timestep_embedding",
]

BETA_SCHEDULES = ("trunc_lin", "linear", "cosine", "sqrt")

# improved-diffusion clips betas derived from an alpha_bar function at 0.999 so
# the last step never destroys the signal with a beta of exactly 1.
_MAX_BETA = 0.999


def _check_num_steps(num_steps, name="diffusion_steps"):
    if (
        isinstance(num_steps, bool)
        or not isinstance(num_steps, (int, np.integer))
        or num_steps <= 0
    ):
        raise ConfigError(
            f"{name}={num_steps!r} is invalid: it must be a positive integer "
            f"(set e.g. --{name}=32)."
        )
    return int(num_steps)


def _betas_for_alpha_bar(num_steps, alpha_bar):
    """Betas whose cumulative product follows ``alpha_bar`` on [0, 1]."""
    betas = [
        min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), _MAX_BETA)
        for i in range(num_steps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def get_beta_schedule(name, num_steps, beta_start=None, beta_end=None):
    """Return the noise schedule ``beta`` as a float64 tensor of shape [T].

    Args:
        name: ``trunc_lin`` (DiffuRec/ADRec): with ``s = 1000 / T``,
            ``linspace(s * 1e-4 + 0.01, s * 0.02 + 0.01, T)``, the end replaced
            by ``s * 0.001 + 0.01`` when it would exceed 1; ``beta_start`` /
            ``beta_end`` override the two ends when given.
            ``linear`` (CDDRec): ``linspace(beta_start, beta_end, T)``, by
            default DDPM's 1e-4 .. 0.02.
            ``cosine`` / ``sqrt`` (Nichol & Dhariwal; DiffuRec's code): derived
            from an ``alpha_bar`` function, betas clipped at 0.999;
            ``beta_start`` / ``beta_end`` are ignored.
        num_steps: T, a positive integer.

    Raises:
        ConfigError: unknown name, ``T <= 0`` or betas outside (0, 1].
    """
    num_steps = _check_num_steps(num_steps)
    if name == "trunc_lin":
        scale = 1000 / num_steps
        start = scale * 1e-4 + 0.01
        end = scale * 0.02 + 0.01
        if end > 1:
            end = scale * 0.001 + 0.01
        start = start if beta_start is None else beta_start
        end = end if beta_end is None else beta_end
        betas = torch.linspace(start, end, num_steps, dtype=torch.float64)
    elif name == "linear":
        start = 1e-4 if beta_start is None else beta_start
        end = 0.02 if beta_end is None else beta_end
        betas = torch.linspace(start, end, num_steps, dtype=torch.float64)
    elif name == "cosine":
        betas = _betas_for_alpha_bar(
            num_steps, lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        )
    elif name == "sqrt":
        betas = _betas_for_alpha_bar(num_steps, lambda u: 1 - math.sqrt(u + 1e-4))
    else:
        raise ConfigError(
            f"noise_schedule={name!r} is invalid: choose one of "
            f"{', '.join(BETA_SCHEDULES)}."
        )
    if not bool(((betas > 0) & (betas <= 1)).all()):
        raise ConfigError(
            f"The {name} schedule with T={num_steps}, beta_start={beta_start}, "
            f"beta_end={beta_end} gives betas outside (0, 1]: choose "
            "0 < beta_start <= beta_end <= 1."
        )
    return betas


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding of (possibly fractional) timesteps.

    Returns ``timesteps.shape + [dim]``: the cosine half then the sine half
    with frequencies ``max_period ** (-i / (dim // 2))``; an odd ``dim`` gets a
    trailing zero column.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=timesteps.device)
        / half
    )  # [dim/2]
    args = timesteps.float().unsqueeze(-1) * freqs  # [..., dim/2]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[..., :1])], -1)
    return embedding


class StepEmbedding(nn.Module):
    """Diffusion-step embedding ``d_t``: sinusoid of ``t * 1000 / T``, then an MLP.

    The rescaling to [0, 1000) (improved-diffusion's ``rescale_timesteps``)
    keeps the sinusoid's frequencies meaningful whatever T is.

    ``t`` takes only T values, so when it has more elements than T the MLP
    (H -> 4H -> H) runs once per step value, on a [T H] table, and each
    element reads its row: the same function, row by row, and the same
    gradients (rows that share a step add up in the table's). ADRec embeds
    one step per token (16 x 20 under the ``cpu`` protocol, T 32): this is a
    tenth of the MLP's work there, about 10% of its training step's FLOPs.
    ``use_table=False`` (config ``step_embedding_table: False``) runs the MLP
    on every element.
    """

    def __init__(self, hidden_size, num_steps, use_table=True):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_steps = _check_num_steps(num_steps)
        self.use_table = use_table
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size),
            nn.SiLU(),
            nn.Linear(4 * hidden_size, hidden_size),
        )

    def _embed(self, t):
        scaled = t.float() * (1000.0 / self.num_steps)
        sinusoid = timestep_embedding(scaled, self.hidden_size)
        return self.mlp(sinusoid.to(self.mlp[0].weight.dtype))

    def forward(self, t):
        """``t``: long tensor [B] or [B L] of steps in 0..T-1 -> [..., H]."""
        if not self.use_table or t.numel() <= self.num_steps:
            return self._embed(t)
        table = self._embed(torch.arange(self.num_steps, device=t.device))  # [T H]
        return F.embedding(t, table)


def respaced_steps(num_steps, inference_steps):
    """The original step indices kept by a chain of ``inference_steps`` steps.

    Evenly spaced over 0..T-1, always containing T-1 and 0 (only T-1 when
    ``inference_steps == 1``). Returns a sorted long tensor.
    """
    num_steps = _check_num_steps(num_steps)
    if (
        isinstance(inference_steps, bool)
        or not isinstance(inference_steps, (int, np.integer))
        or not 1 <= inference_steps <= num_steps
    ):
        raise ConfigError(
            f"inference_steps={inference_steps!r} is invalid: it must be an "
            f"integer in 1..diffusion_steps ({num_steps}), or null for all steps."
        )
    if inference_steps == 1:
        return torch.tensor([num_steps - 1], dtype=torch.long)
    # With K <= T the spacing (T-1)/(K-1) is >= 1, so rounding keeps K distinct
    # steps.
    kept = np.round(np.linspace(0, num_steps - 1, inference_steps)).astype(np.int64)
    return torch.from_numpy(kept)


def _extract(table, t, x):
    """``table[t]`` shaped to broadcast against ``x`` (t's shape is x's prefix)."""
    values = table.to(x.dtype)[t]
    return values.reshape(t.shape + (1,) * (x.dim() - t.dim()))


class GaussianDiffusion(nn.Module):
    """Schedule tables, forward noising and the reverse process.

    All tables are float32 buffers of shape [T] (computed in float64), not
    saved in checkpoints since they follow from the configuration:
    ``betas``, ``alphas``, ``alphas_cumprod`` (abar_t), ``alphas_cumprod_prev``
    (abar_{t-1}), ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``,
    ``posterior_variance``, ``posterior_mean_coef1``, ``posterior_mean_coef2``
    and ``sampling_variance`` (DiffuRec's "fixed large" variance: beta_t for
    t >= 1, the posterior variance of step 1 at t = 0).
    """

    def __init__(self, num_steps, schedule="trunc_lin", beta_start=None, beta_end=None):
        super().__init__()
        betas = get_beta_schedule(schedule, num_steps, beta_start, beta_end)
        self._register_tables(betas)

    @classmethod
    def from_betas(cls, betas):
        """A diffusion with an explicit float64 schedule (used for respacing)."""
        diffusion = cls.__new__(cls)
        nn.Module.__init__(diffusion)
        diffusion._register_tables(betas.to(torch.float64))
        return diffusion

    def _register_tables(self, betas):
        self.num_steps = int(betas.shape[0])
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat(
            [alphas_cumprod.new_ones(1), alphas_cumprod[:-1]]
        )
        posterior_variance = (
            betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        )
        tables = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_mean_coef1": betas
            * alphas_cumprod_prev.sqrt()
            / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev)
            * alphas.sqrt()
            / (1.0 - alphas_cumprod),
            # posterior_variance[0] is 0; DiffuRec uses step 1's at t = 0 (no
            # noise is added there anyway).
            "sampling_variance": torch.cat(
                [posterior_variance[min(1, self.num_steps - 1)].reshape(1), betas[1:]]
            ),
        }
        for name, table in tables.items():
            self.register_buffer(name, table.to(torch.float32), persistent=False)
        # float64 schedule kept on the CPU for exact respacing; respaced chains
        # cached by inference_steps in a plain dict (not submodules), so they
        # stay out of state_dict and are moved lazily on use.
        self._betas64 = betas.detach().cpu()
        self._respaced = {}

    # ------------------------------------------------------------------ #
    # forward process
    # ------------------------------------------------------------------ #
    def sample_timesteps(self, shape, device, generator=None):
        """Steps drawn uniformly from 0..T-1, a long tensor of ``shape``."""
        return torch.randint(
            0, self.num_steps, tuple(shape), device=device, generator=generator
        )

    def q_sample(self, x0, t, noise=None):
        """``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``.

        ``t`` is [B] (x0 [B H] or [B L H]) or [B L] (x0 [B L H], one step per
        token); the tables broadcast over x0's trailing dimensions.
        """
        if noise is None:
            noise = torch.randn_like(x0)
        return (
            _extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    # ------------------------------------------------------------------ #
    # reverse process
    # ------------------------------------------------------------------ #
    def q_posterior_mean_variance(self, x0, x_t, t):
        """Mean and variance of q(x_{t-1} | x_t, x0); the variance has x_t's shape."""
        mean = (
            _extract(self.posterior_mean_coef1, t, x_t) * x0
            + _extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = _extract(self.posterior_variance, t, x_t).expand_as(x_t)
        return mean, variance

    def p_sample_step(self, x0_hat, x_t, t, noise=None):
        """One reverse step ``x_{t-1} = mean(x0_hat, x_t) + sqrt(v_t) z``.

        ``v_t`` is the "fixed large" ``sampling_variance``; where ``t == 0`` no
        noise is added and the step returns ``x0_hat`` exactly.
        """
        mean, _ = self.q_posterior_mean_variance(x0_hat, x_t, t)
        if noise is None:
            noise = torch.randn_like(x_t)
        std = _extract(self.sampling_variance, t, x_t).sqrt()
        stepped = mean + std * noise
        last = (t == 0).reshape(t.shape + (1,) * (x_t.dim() - t.dim()))
        # c1 = 1 and c2 = 0 at t = 0 only up to float rounding: return x0_hat
        # itself.
        return torch.where(last, x0_hat, stepped)

    def respace(self, inference_steps=None):
        """The chain over ``inference_steps`` evenly spaced steps.

        Returns ``(diffusion, kept_steps)``: a :class:`GaussianDiffusion` whose
        step ``i`` is original step ``kept_steps[i]``, with betas re-derived
        from the kept ``alpha_bar`` values (Nichol & Dhariwal), so its
        ``alphas_cumprod`` equals ``self.alphas_cumprod[kept_steps]``. ``None``
        or T gives ``self``. Cached per ``inference_steps``.
        """
        device = self.betas.device
        if inference_steps is None or (
            isinstance(inference_steps, int) and inference_steps == self.num_steps
        ):
            return self, torch.arange(self.num_steps, device=device)
        if inference_steps not in self._respaced:
            kept = respaced_steps(self.num_steps, inference_steps)
            alphas_cumprod = torch.cumprod(1.0 - self._betas64, dim=0)[kept]
            previous = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
            betas = 1.0 - alphas_cumprod / previous
            self._respaced[inference_steps] = (
                GaussianDiffusion.from_betas(betas),
                kept,
            )
        diffusion, kept = self._respaced[inference_steps]
        return diffusion.to(device), kept.to(device)

    @torch.no_grad()
    def sample(
        self,
        denoise_fn,
        shape,
        device,
        inference_steps=None,
        noise=None,
        generator=None,
    ):
        """Run the reverse chain from ``x_T ~ N(0, I)`` (or ``noise``).

        Args:
            denoise_fn: ``denoise_fn(x_t, t) -> x0_hat`` with ``t`` a long
                tensor [B] of ORIGINAL step indices in 0..T-1.
            shape: shape of x, ``[B, ...]``.
            device: where to create x and the noise.
            inference_steps: number of reverse steps, ``None`` for T; fewer
                steps use the respaced chain (see :meth:`respace`).
            noise: optional ``x_T``.
            generator: optional ``torch.Generator`` on ``device`` for x_T and
                the per-step noise.

        Returns:
            ``(x0_hat, x)`` of the final step: the last prediction (what models
            score with) and the final sample (equal to it, t = 0 adds no noise).
        """
        diffusion, kept = self.respace(inference_steps)
        kept = kept.to(device)
        x = (
            noise
            if noise is not None
            else torch.randn(tuple(shape), device=device, generator=generator)
        )
        batch = x.shape[0]
        x0_hat = x
        for i in reversed(range(diffusion.num_steps)):
            t_original = kept[i].expand(batch)
            x0_hat = denoise_fn(x, t_original)
            step_noise = torch.randn(
                x.shape, device=device, generator=generator, dtype=x.dtype
            )
            t_respaced = torch.full((batch,), i, dtype=torch.long, device=device)
            x = diffusion.p_sample_step(x0_hat, x, t_respaced, noise=step_noise)
        return x0_hat, x
