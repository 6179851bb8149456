"""The shared Gaussian diffusion core against closed forms."""

import math

import pytest
import torch

from recbole_diffusion.diffusion import (
    BETA_SCHEDULES,
    GaussianDiffusion,
    StepEmbedding,
    get_beta_schedule,
    respaced_steps,
    timestep_embedding,
)
from recbole_diffusion.utils import ConfigError


# --------------------------------------------------------------------------- #
# schedules
# --------------------------------------------------------------------------- #
def test_trunc_lin_values_for_32_steps():
    betas = get_beta_schedule("trunc_lin", 32)
    assert betas.dtype == torch.float64 and betas.shape == (32,)
    # s = 1000 / 32: beta runs s * 1e-4 + 0.01 -> s * 0.02 + 0.01, evenly.
    expected = torch.linspace(0.013125, 0.635, 32, dtype=torch.float64)
    torch.testing.assert_close(betas, expected, rtol=0, atol=1e-12)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    assert alphas_cumprod[0].item() == pytest.approx(0.986875, abs=1e-9)
    assert 5e-7 < alphas_cumprod[-1].item() < 2e-6


def test_trunc_lin_truncates_end_above_one():
    # T = 10: s = 100, s * 0.02 + 0.01 = 2.01 > 1, so the end is s * 1e-3 + 0.01.
    betas = get_beta_schedule("trunc_lin", 10)
    assert betas[0].item() == pytest.approx(0.02)
    assert betas[-1].item() == pytest.approx(0.11)


def test_linear_uses_given_ends():
    betas = get_beta_schedule("linear", 20, beta_start=1e-4, beta_end=0.04)
    torch.testing.assert_close(
        betas, torch.linspace(1e-4, 0.04, 20, dtype=torch.float64)
    )


@pytest.mark.parametrize("name", BETA_SCHEDULES)
def test_alpha_bar_decreases_monotonically(name):
    diffusion = GaussianDiffusion(32, name)
    alphas_cumprod = diffusion.alphas_cumprod
    assert alphas_cumprod.dtype == torch.float32
    assert bool((alphas_cumprod[1:] < alphas_cumprod[:-1]).all())
    assert 0 < alphas_cumprod[-1] < alphas_cumprod[0] < 1
    assert bool((diffusion.betas > 0).all()) and bool((diffusion.betas < 1).all())


def test_cosine_schedule_follows_its_alpha_bar():
    betas = get_beta_schedule("cosine", 50)

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    alphas_cumprod = torch.cumprod(1 - betas, 0)
    # exact until the 0.999 clip, which only bites at the very last step
    assert alphas_cumprod[24].item() == pytest.approx(f(25 / 50) / f(0), rel=1e-9)


def test_sqrt_schedule_follows_its_alpha_bar():
    # Diffusion-LM's sqrt schedule: abar(u) = 1 - sqrt(u + 1e-4), u = t / T
    betas = get_beta_schedule("sqrt", 40)

    def f(u):
        return 1 - math.sqrt(u + 1e-4)

    for step in (0, 9, 19, 38):  # clipped at 0.999 only near the end
        expected = 1 - f((step + 1) / 40) / f(step / 40)
        assert betas[step].item() == pytest.approx(expected, rel=1e-9)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    assert alphas_cumprod[19].item() == pytest.approx(f(20 / 40) / f(0), rel=1e-9)


@pytest.mark.parametrize(
    "name, steps, kwargs",
    [
        ("trunc_linear", 32, {}),
        ("trunc_lin", 0, {}),
        ("trunc_lin", -3, {}),
        ("trunc_lin", 2.5, {}),
        ("linear", 10, {"beta_start": 0.0, "beta_end": 0.02}),
        ("linear", 10, {"beta_start": 0.1, "beta_end": 1.5}),
    ],
)
def test_bad_schedules_are_refused(name, steps, kwargs):
    with pytest.raises(ConfigError):
        get_beta_schedule(name, steps, **kwargs)


def test_tables_are_float32_and_not_saved():
    diffusion = GaussianDiffusion(8)
    assert diffusion.state_dict() == {}
    for name, buffer in diffusion.named_buffers():
        assert buffer.dtype == torch.float32 and buffer.shape == (8,), name


# --------------------------------------------------------------------------- #
# step embedding
# --------------------------------------------------------------------------- #
def test_timestep_embedding_closed_form():
    t = torch.tensor([[0, 3], [7, 1]])  # any shape -> shape + [dim]
    embedding = timestep_embedding(t, 8)
    assert embedding.shape == (2, 2, 8)
    torch.testing.assert_close(embedding[0, 0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.tensor([10000 ** (-i / 4) for i in range(4)])
    expected = torch.cat([torch.cos(7 * freqs), torch.sin(7 * freqs)])
    torch.testing.assert_close(embedding[1, 0], expected)
    assert timestep_embedding(torch.tensor([2]), 7).shape == (1, 7)


def test_step_embedding_rescales_steps_to_1000():
    torch.manual_seed(0)
    embed = StepEmbedding(hidden_size=6, num_steps=20)
    t = torch.tensor([[0, 5, 19]])
    out = embed(t)
    assert out.shape == (1, 3, 6)
    expected = embed.mlp(timestep_embedding(t.float() * 50.0, 6))
    torch.testing.assert_close(out, expected)
    assert embed(torch.tensor([5]))[0].allclose(out[0, 1])


@pytest.mark.parametrize("shape", [(4, 9), (40,)])
def test_step_embedding_table_gives_each_elements_mlp_and_its_gradients(shape):
    """Catches the per-step table (taken when t has more elements than T) read
    at the wrong row, built from unscaled steps, whose rows that share a step
    do not add their gradients, or not taken at all: against the MLP applied
    element by element, outputs and parameter gradients, in float64."""
    torch.manual_seed(0)
    embed = StepEmbedding(hidden_size=6, num_steps=7).double()
    t = torch.randint(0, 7, shape)
    assert t.numel() > 7 and len(t.unique()) < t.numel()  # the table path
    weights = torch.randn(*shape, 6, dtype=torch.float64)
    rows = []
    hook = embed.mlp[0].register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    out = embed(t)
    hook.remove()
    assert rows == [7]  # the MLP ran once, on the T steps, not on every element
    (out * weights).sum().backward()
    table_grads = [p.grad.clone() for p in embed.parameters()]
    embed.zero_grad()
    expected = torch.stack(
        [
            embed.mlp(timestep_embedding(step.view(1) * (1000.0 / 7), 6).double())[0]
            for step in t.flatten()
        ]
    ).view(*shape, 6)
    (expected * weights).sum().backward()
    torch.testing.assert_close(out, expected)
    for got, want in zip(table_grads, (p.grad for p in embed.parameters())):
        torch.testing.assert_close(got, want)
    # the switch (step_embedding_table: False): the MLP on every element
    embed.use_table = False
    rows.clear()
    hook = embed.mlp[0].register_forward_hook(lambda m, i, o: rows.append(i[0].shape))
    torch.testing.assert_close(embed(t), expected)
    hook.remove()
    assert rows == [(*shape, 6)]


# --------------------------------------------------------------------------- #
# forward process
# --------------------------------------------------------------------------- #
def test_q_sample_formula_and_per_token_steps():
    diffusion = GaussianDiffusion(32)
    x0 = torch.randn(2, 3, 4)
    noise = torch.randn(2, 3, 4)
    t = torch.tensor([[0, 5, 31], [1, 1, 2]])  # one step per token
    out = diffusion.q_sample(x0, t, noise)
    abar = diffusion.alphas_cumprod[t].unsqueeze(-1)
    torch.testing.assert_close(out, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    # t of shape [B] broadcasts over [B L H]
    t_row = torch.tensor([4, 9])
    out_row = diffusion.q_sample(x0, t_row, noise)
    torch.testing.assert_close(
        out_row[1], diffusion.q_sample(x0[1], t_row[1:2].expand(3), noise[1])
    )


def test_q_sample_moments():
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(32)
    x0 = torch.full((40000, 2), 1.5)
    t = torch.full((40000,), 10)
    samples = diffusion.q_sample(x0, t)
    abar = diffusion.alphas_cumprod[10].item()
    assert samples.mean().item() == pytest.approx(1.5 * math.sqrt(abar), abs=0.01)
    assert samples.var().item() == pytest.approx(1 - abar, abs=0.01)


def test_sample_timesteps_cover_all_steps_uniformly():
    diffusion = GaussianDiffusion(4)
    generator = torch.Generator().manual_seed(0)
    t = diffusion.sample_timesteps((8000,), "cpu", generator)
    assert t.dtype == torch.long
    counts = torch.bincount(t, minlength=4)
    assert counts.shape == (4,) and bool((counts - 2000).abs().max() < 150)


# --------------------------------------------------------------------------- #
# posterior and reverse step
# --------------------------------------------------------------------------- #
def test_posterior_coefficients_match_formulas():
    diffusion = GaussianDiffusion(16, "trunc_lin")
    betas = get_beta_schedule("trunc_lin", 16)
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    c1 = betas * abar_prev.sqrt() / (1 - abar)
    c2 = (1 - abar_prev) * alphas.sqrt() / (1 - abar)
    var = betas * (1 - abar_prev) / (1 - abar)
    torch.testing.assert_close(diffusion.posterior_mean_coef1, c1.float())
    torch.testing.assert_close(diffusion.posterior_mean_coef2, c2.float())
    torch.testing.assert_close(diffusion.posterior_variance, var.float())
    # "fixed large" sampling variance: beta_t, and step 1's posterior at t = 0
    torch.testing.assert_close(diffusion.sampling_variance[1:], betas[1:].float())
    assert diffusion.sampling_variance[0] == diffusion.posterior_variance[1]


def test_posterior_mean_of_noiseless_x_t_is_noiseless_x_prev():
    # With x_t = sqrt(abar_t) x0 the posterior mean is sqrt(abar_{t-1}) x0.
    diffusion = GaussianDiffusion(32)
    x0 = torch.randn(5, 3)
    t = torch.tensor([1, 4, 10, 20, 31])
    x_t = diffusion.sqrt_alphas_cumprod[t].unsqueeze(-1) * x0
    mean, variance = diffusion.q_posterior_mean_variance(x0, x_t, t)
    expected = diffusion.alphas_cumprod_prev[t].sqrt().unsqueeze(-1) * x0
    torch.testing.assert_close(mean, expected, rtol=1e-4, atol=1e-5)
    assert variance.shape == x_t.shape


def test_posterior_mean_is_x0_at_t0():
    diffusion = GaussianDiffusion(32)
    x0, x_t = torch.randn(4, 6), torch.randn(4, 6)
    mean, variance = diffusion.q_posterior_mean_variance(x0, x_t, torch.zeros(4).long())
    torch.testing.assert_close(mean, x0)
    assert bool((variance == 0).all())


def test_p_sample_step_adds_noise_except_at_t0():
    diffusion = GaussianDiffusion(32)
    x0_hat, x_t, noise = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    t = torch.tensor([0, 1, 17])
    out = diffusion.p_sample_step(x0_hat, x_t, t, noise)
    assert torch.equal(out[0], x0_hat[0])  # exactly, no noise
    mean, _ = diffusion.q_posterior_mean_variance(x0_hat, x_t, t)
    expected = mean + diffusion.betas[t].sqrt().unsqueeze(-1) * noise
    torch.testing.assert_close(out[1:], expected[1:])


# --------------------------------------------------------------------------- #
# reverse loop and respacing
# --------------------------------------------------------------------------- #
def _recording_denoiser(calls):
    def denoise(x_t, t):
        calls.append(t.clone())
        return 0.5 * x_t + 0.1 * t.float().unsqueeze(-1)

    return denoise


def test_sample_runs_every_step_in_reverse_and_returns_last_x0_hat():
    diffusion = GaussianDiffusion(6)
    calls = []
    x_T = torch.randn(3, 4)
    x0_hat, x = diffusion.sample(_recording_denoiser(calls), (3, 4), "cpu", noise=x_T)
    assert [c.tolist() for c in calls] == [[t] * 3 for t in range(5, -1, -1)]
    assert torch.equal(x0_hat, x)  # the t = 0 step adds no noise

    # replay the chain by hand with the same generator draws
    generator = torch.Generator().manual_seed(3)
    x0_a, _ = diffusion.sample(lambda x, t: 0.5 * x, (3, 4), "cpu", generator=generator)
    generator = torch.Generator().manual_seed(3)
    x_by_hand = torch.randn(3, 4, generator=generator)
    for step in range(5, -1, -1):
        t = torch.full((3,), step)
        step_noise = torch.randn(3, 4, generator=generator)
        x0_b = 0.5 * x_by_hand
        x_by_hand = diffusion.p_sample_step(x0_b, x_by_hand, t, step_noise)
    torch.testing.assert_close(x0_a, x0_b)


def test_sample_is_deterministic_under_a_generator():
    diffusion = GaussianDiffusion(8)
    runs = [
        diffusion.sample(
            lambda x, t: x.tanh(),
            (2, 3),
            "cpu",
            generator=torch.Generator().manual_seed(7),
        )[0]
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


def test_inference_steps_equal_to_T_is_the_plain_chain():
    diffusion = GaussianDiffusion(10)
    plain = diffusion.sample(
        lambda x, t: x.tanh(), (2, 3), "cpu", generator=torch.Generator().manual_seed(1)
    )[0]
    full = diffusion.sample(
        lambda x, t: x.tanh(),
        (2, 3),
        "cpu",
        inference_steps=10,
        generator=torch.Generator().manual_seed(1),
    )[0]
    assert torch.equal(plain, full)


@pytest.mark.parametrize("inference_steps", [1, 2, 5, 13, 31])
def test_respaced_alpha_bar_matches_kept_steps(inference_steps):
    diffusion = GaussianDiffusion(32)
    respaced, kept = diffusion.respace(inference_steps)
    assert respaced.num_steps == inference_steps == kept.numel()
    assert kept[-1] == 31 and (inference_steps == 1 or kept[0] == 0)
    assert bool((kept[1:] > kept[:-1]).all())
    torch.testing.assert_close(
        respaced.alphas_cumprod, diffusion.alphas_cumprod[kept], rtol=1e-5, atol=0
    )
    assert diffusion.respace(inference_steps)[0] is respaced  # cached


def test_respaced_chain_calls_kept_original_steps():
    diffusion = GaussianDiffusion(32)
    calls = []
    diffusion.sample(_recording_denoiser(calls), (2, 4), "cpu", inference_steps=4)
    assert [c[0].item() for c in calls] == [31, 21, 10, 0]
    assert respaced_steps(32, 4).tolist() == [0, 10, 21, 31]


@pytest.mark.parametrize("inference_steps", [0, 33, 2.0])
def test_bad_inference_steps_are_refused(inference_steps):
    with pytest.raises(ConfigError):
        GaussianDiffusion(32).respace(inference_steps)
