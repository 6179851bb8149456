"""DiffuRec and DiffuRecSys: masks, conditioning, noise, inference, real runs."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import UNIT_N_ITEMS, UnitDataset, unit_config
from recbole.data.interaction import Interaction

from recbole_diffusion.config import props_dir
from recbole_diffusion.model.diffurec import DiffuRec
from recbole_diffusion.model.diffurecsys import DiffuRecSys
from recbole_diffusion.utils import ConfigError

N_ITEMS = UNIT_N_ITEMS


def make_config(model="DiffuRec", **overrides):
    """The model's yaml defaults, shrunk to test size, as a plain dict."""
    return unit_config(
        model,
        **{
            "hidden_size": 16,
            "n_heads": 2,
            "n_layers": 2,
            "diffusion_steps": 8,
            "MAX_ITEM_LIST_LENGTH": 6,
            **overrides,
        },
    )


def make_model(model_class=DiffuRec, seed=0, **overrides):
    torch.manual_seed(seed)
    name = "DiffuRecSys" if model_class is DiffuRecSys else "DiffuRec"
    return model_class(make_config(name, **overrides), UnitDataset())


def make_batch(sequences, width=6, fill=None, targets=None):
    """Right-padded item sequences; ``fill`` puts items in the padding instead."""
    rows = []
    for index, sequence in enumerate(sequences):
        padding = width - len(sequence)
        pad = (
            [0] * padding
            if fill is None
            else [(fill + index + j) % 19 + 1 for j in range(padding)]
        )
        rows.append(list(sequence) + pad)
    targets = targets if targets is not None else [s[-1] % 20 + 1 for s in sequences]
    return Interaction(
        {
            "item_id_list": torch.tensor(rows),
            "item_length": torch.tensor([len(s) for s in sequences]),
            "item_id": torch.tensor(targets),
        }
    )


SEQUENCES = [[3, 4, 5], [7, 1, 2, 9, 11], [12, 13], [2, 4, 6, 8]]


def scores_under_seed(model, batch, seed=1, method="full_sort_predict"):
    torch.manual_seed(seed)
    with torch.no_grad():
        return getattr(model, method)(batch)


def loss_under_seed(model, batch, seed=1):
    torch.manual_seed(seed)
    return model.calculate_loss(batch)


# --------------------------------------------------------------------------- #
# configuration
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("model", ["DiffuRec", "DiffuRecSys"])
def test_yaml_defaults_are_valid_and_papers(model):
    config = make_config(model)
    DiffuRec.validate_config(config)
    with open(os.path.join(props_dir(), f"{model}.yaml")) as handle:
        defaults = yaml.safe_load(handle)
    assert defaults["diffusion_steps"] == 32 and defaults["lambda_uncertainty"] == 0.001
    assert defaults["noise_schedule"] == "trunc_lin" and defaults["ensemble_size"] == 1
    if model == "DiffuRecSys":  # the paper's V2
        assert defaults["conditioning"] == "cross_attention"
        assert defaults["offset_noise"] == 0.1
    else:
        assert defaults["conditioning"] == "sum" and defaults["offset_noise"] == 0


@pytest.mark.parametrize(
    "key, value",
    [
        ("diffusion_steps", 0),
        ("diffusion_steps", -4),
        ("hidden_dropout_prob", -0.1),
        ("attn_dropout_prob", 1.0),
        ("emb_dropout_prob", -0.3),
        ("noise_schedule", "trunc_linear"),
        ("conditioning", "concat"),
        ("n_heads", 3),
        ("ensemble_size", 0),
        ("inference_steps", 9),
        ("inference_steps", 0),
        ("offset_noise", -0.1),
        ("lambda_uncertainty", -1.0),
        ("loss_type", "BPR"),
        ("beta_end", 2.0),
    ],
)
def test_bad_hyperparameters_are_refused(key, value):
    with pytest.raises(ConfigError, match=key if key != "beta_end" else "beta"):
        DiffuRec.validate_config(make_config(**{key: value}))
    with pytest.raises(ConfigError):
        DiffuRec(make_config(**{key: value}), UnitDataset())


def test_pipeline_refuses_bad_steps_before_loading_data(tiny_config):
    from recbole_diffusion.quick_start import build_pipeline

    with pytest.raises(ConfigError, match="diffusion_steps"):
        build_pipeline(
            model="DiffuRecSys-V1",
            dataset="tiny",
            config_dict={**tiny_config, "diffusion_steps": 0},
        )


# --------------------------------------------------------------------------- #
# embeddings, lambda, masks
# --------------------------------------------------------------------------- #
def test_item_embeddings_are_unit_scale_with_zero_padding():
    weight = make_model(hidden_size=64).item_embedding.weight
    assert weight[0].abs().sum() == 0
    assert 0.9 < weight[1:].std().item() < 1.1


def _approximate(model, batch, x_t, t):
    item_seq, item_seq_len = batch["item_id_list"], batch["item_length"]
    history, mask, last = model.encode_history(item_seq, item_seq_len)
    return model.approximate(history, mask, last, x_t, t)


@pytest.mark.parametrize("conditioning", ["sum", "cross_attention"])
def test_lambda_is_redrawn_at_every_call_and_scales_the_target(conditioning):
    batch = make_batch(SEQUENCES)
    x_t, t = torch.randn(4, 16), torch.tensor([0, 3, 5, 7])
    model = make_model(conditioning=conditioning).eval()
    with torch.no_grad():
        first, second = (
            _approximate(model, batch, x_t, t),
            _approximate(model, batch, x_t, t),
        )
    assert not torch.equal(first, second)  # a new lambda each call
    # delta = 0: lambda = 0, so the target and the draws no longer matter
    model.lambda_uncertainty = 0.0
    with torch.no_grad():
        first = _approximate(model, batch, x_t, t)
        second = _approximate(model, batch, 10 * torch.randn(4, 16), t)
    torch.testing.assert_close(first, second)


@pytest.mark.parametrize("conditioning", ["sum", "cross_attention"])
def test_lambda_is_drawn_per_row_position_and_channel_from_n_delta_delta(
    conditioning,
):
    delta = 0.05
    model = make_model(
        conditioning=conditioning, hidden_size=64, lambda_uncertainty=delta
    ).eval()
    sequences = [[(7 * r + j) % 19 + 1 for j in range(5)] for r in range(64)]
    batch = make_batch(sequences)
    x_t = torch.randn(64, 64)
    t = torch.randint(0, 8, (64,))
    # the conditioning term lambda * (x_t + d_t), [B L H], as the model forms it
    if conditioning == "sum":
        module, read = model.blocks[0], lambda args: args[0] - history
    else:
        module, read = model.cross_attention, lambda args: args[0]
    captured = []
    module.register_forward_pre_hook(lambda m, args: captured.append(read(args)))
    with torch.no_grad():
        history, _, _ = model.encode_history(
            batch["item_id_list"], batch["item_length"]
        )
        _approximate(model, batch, x_t, t)
        guidance = x_t + model.step_embedding(t)  # [B H]
    lam = captured[0] / guidance.unsqueeze(1)  # [B L H]
    assert lam.shape == (64, 5, 64)
    assert lam.mean().item() == pytest.approx(delta, rel=0.05)
    assert lam.std().item() == pytest.approx(delta, rel=0.05)
    # independent across channels, positions and rows, not one draw broadcast
    for dim in (0, 1, 2):
        assert lam.std(dim=dim).mean().item() == pytest.approx(delta, rel=0.1)


@pytest.mark.parametrize("conditioning", ["sum", "cross_attention"])
def test_padding_changes_nothing(conditioning):
    model = make_model(conditioning=conditioning)
    plain = make_batch(SEQUENCES, width=6)
    wide = make_batch(SEQUENCES, width=11)  # more padding columns
    garbage = make_batch(SEQUENCES, width=6, fill=5)  # real items in the padding
    lengths = []
    model.blocks[0].register_forward_pre_hook(
        lambda m, args: lengths.append(args[0].shape[1])
    )

    model.eval()
    reference = scores_under_seed(model, plain)
    for other in (wide, garbage):
        torch.testing.assert_close(
            scores_under_seed(model, other), reference, rtol=0, atol=1e-5
        )
    # the Transformer only sees the longest real sequence (5), never 6 or 11
    assert set(lengths) == {5}

    model.train()  # dropout draws have the same shapes too, so losses agree
    reference = loss_under_seed(model, plain)
    for other in (wide, garbage):
        torch.testing.assert_close(loss_under_seed(model, other), reference)


@pytest.mark.parametrize("conditioning", ["sum", "cross_attention"])
def test_trimming_gives_the_untrimmed_models_scores_and_loss(conditioning):
    model = make_model(conditioning=conditioning).eval()
    batch = make_batch(SEQUENCES, width=6)  # longest real sequence: 5
    lengths = []
    model.blocks[0].register_forward_pre_hook(
        lambda m, args: lengths.append(args[0].shape[1])
    )
    trimmed = scores_under_seed(model, batch)
    trimmed_loss = loss_under_seed(model, batch)
    model.trim_padding = False
    untrimmed = scores_under_seed(model, batch)
    untrimmed_loss = loss_under_seed(model, batch)
    assert set(lengths) == {5, 6}  # the two paths really ran different widths
    torch.testing.assert_close(trimmed, untrimmed, rtol=0, atol=1e-5)
    torch.testing.assert_close(trimmed_loss, untrimmed_loss, rtol=0, atol=1e-6)


def _full_and_last_position_steps(batch, trim=True, **settings):
    """(full, part) models' training-step loss, gradients, the generator's
    next draw and evaluation scores, from the same weights and seed; also
    which of the two ran its last block's forward."""
    full = make_model(last_position_only=False, **settings)
    part = make_model(last_position_only=True, **settings)
    part.load_state_dict(full.state_dict())
    full.trim_padding = part.trim_padding = trim
    calls = []
    results = []
    for name, model in (("full", full), ("part", part)):
        model.blocks[-1].register_forward_pre_hook(
            lambda *args, name=name: calls.append(name)
        )
        loss = loss_under_seed(model.train(), batch)
        loss.backward()
        after = torch.rand(3)  # where the generator stands after the step
        gradients = {
            n: q.grad for n, q in model.named_parameters() if q.grad is not None
        }
        eval_scores = scores_under_seed(model.eval(), batch)
        results.append((loss.detach(), gradients, after, eval_scores))
    return results, set(calls)


def _assert_same_step(results, same_stream=True):
    (full_loss, full_grads, full_after, full_eval), part = results
    part_loss, part_grads, part_after, part_eval = part
    torch.testing.assert_close(part_eval, full_eval, rtol=1e-6, atol=1e-5)
    if not same_stream:
        return
    torch.testing.assert_close(part_loss, full_loss, rtol=1e-6, atol=1e-6)
    assert part_grads.keys() == full_grads.keys()
    for name, gradient in full_grads.items():
        torch.testing.assert_close(
            part_grads[name], gradient, rtol=1e-5, atol=1e-6, msg=name
        )
    torch.testing.assert_close(part_after, full_after, rtol=0, atol=0)


DROPOUTS = dict(hidden_dropout_prob=0.3, attn_dropout_prob=0.3, emb_dropout_prob=0.2)


@pytest.mark.parametrize("fast_dropout", [True, False])
@pytest.mark.parametrize("conditioning", ["sum", "cross_attention"])
def test_last_block_at_one_position_gives_the_full_blocks_training_step(
    conditioning, fast_dropout
):
    """``last_position_only``: in training, with every dropout on, the last
    block computed at x0_hat's position alone gives the full block's loss and
    gradients, and leaves torch's generator where the full block does (the
    masks are the whole tensors' masks, cut). Catches a mask read at another
    position or drawn at the part's shape (other mask values), a wrong query
    row, a skipped or repeated dropout (the generator moves differently),
    and the config key not reaching the model. torch's own dropout
    (``fast_dropout`` False, or a GPU) draws for the part alone: there only
    the evaluation is compared."""
    batch = make_batch(SEQUENCES, width=6, targets=[1, 5, 9, 13])
    results, ran_last_block = _full_and_last_position_steps(
        batch, conditioning=conditioning, fast_dropout=fast_dropout, **DROPOUTS
    )
    # only the full path runs the last block's forward (training and evaluation)
    assert ran_last_block == {"full"}
    _assert_same_step(results, same_stream=fast_dropout)


@pytest.mark.parametrize("large", [False, True], ids=["small-masks", "large-masks"])
@pytest.mark.parametrize("trim", [True, False], ids=["trimmed", "untrimmed"])
def test_last_block_at_one_position_untrimmed_short_rows_and_large_masks(trim, large):
    """The same equality where the test above cannot look: without trimming
    (the masks' length is MAX_ITEM_LIST_LENGTH, not the longest row), with a
    row of one item (x0_hat read at position 0), and with masks of at least
    ``MIN_ELEMENTS`` (numpy-seeded streams, the path real batches take).
    Catches masks drawn at the longest row's length, an index clamped away
    from 0, and ``whole`` ignored on the large-mask path."""
    from recbole_diffusion.fast_layers import MIN_ELEMENTS

    sequences = [[3, 4, 5], [7], [12, 13], [2, 4, 6, 8, 10]]
    sizes = dict(hidden_size=16, n_heads=2)
    if large:
        sizes = dict(hidden_size=64, n_heads=4)
        sequences = sequences * 8  # 32 rows: the FFN's mask is 32 x 7 x 256
        assert MIN_ELEMENTS <= 32 * 7 * 4 * 64
    batch = make_batch(sequences, width=7)
    results, _ = _full_and_last_position_steps(
        batch, trim=trim, MAX_ITEM_LIST_LENGTH=7, **sizes, **DROPOUTS
    )
    _assert_same_step(results)


@pytest.mark.parametrize("conditioning", ["sum", "cross_attention"])
def test_x0_hat_is_read_at_the_last_real_item(conditioning):
    """Independent value: with the blocks made identities, x0_hat = LN(LN(E[last])).

    Zero output projections turn every residual branch (attention, FFN,
    cross-attention) into nothing, and delta = 0 removes the target, so the
    approximator's output at a position is the LayerNorm of that position's
    item embedding. The last items of the rows are 5, 11, 13 and 8, picked by
    hand from ``SEQUENCES``; reading any other position (the first, or the
    padded end) gives another item's embedding.
    """
    model = make_model(conditioning=conditioning, lambda_uncertainty=0.0).eval()
    with torch.no_grad():
        for block in model.blocks:
            for layer in (block.attention.output, block.feed_forward[-1]):
                layer.weight.zero_()
                layer.bias.zero_()
        if conditioning == "cross_attention":
            model.cross_attention.output.weight.zero_()
            model.cross_attention.output.bias.zero_()
        x_t, t = torch.randn(4, 16), torch.tensor([0, 3, 5, 7])
        x0_hat = _approximate(model, make_batch(SEQUENCES), x_t, t)
    last = model.item_embedding.weight[[5, 11, 13, 8]].detach()
    expected = F.layer_norm(F.layer_norm(last, (16,), eps=1e-12), (16,), eps=1e-12)
    torch.testing.assert_close(x0_hat, expected, rtol=0, atol=1e-5)


def test_padded_positions_receive_no_attention():
    model = make_model(conditioning="cross_attention").eval()
    attention = model.blocks[0].attention
    hidden = torch.randn(2, 4, 16)
    mask = torch.tensor([[False, False, True, True], [False, False, False, False]])
    out = attention(hidden, hidden, hidden, mask)
    changed = hidden.clone()
    changed[0, 2:] = 100 * torch.randn(2, 16)  # only the padded keys of row 0
    out_changed = attention(changed, changed, changed, mask)
    torch.testing.assert_close(out_changed[0, :2], out[0, :2])  # real queries
    torch.testing.assert_close(out_changed[1], out[1])


# --------------------------------------------------------------------------- #
# cross-attention conditioning and offset noise
# --------------------------------------------------------------------------- #
def test_cross_attention_queries_come_from_target_keys_from_history():
    model = make_model(conditioning="cross_attention").eval()
    captured = []
    model.cross_attention.register_forward_hook(
        lambda module, args, output: captured.append(
            [a.detach().clone() for a in args[:3]]
        )
    )
    batch = make_batch(SEQUENCES)
    other_history = make_batch([[s[0] % 19 + 1] + s[1:] for s in SEQUENCES])
    x_t, t = torch.randn(4, 16), torch.tensor([1, 2, 3, 4])

    def run(batch, x_t):
        torch.manual_seed(3)  # same lambda
        with torch.no_grad():
            return _approximate(model, batch, x_t, t)

    base = run(batch, x_t)
    new_target = run(batch, x_t + 1.0)
    new_history = run(other_history, x_t)
    (q0, k0, v0), (q1, k1, v1), (q2, k2, v2) = captured
    # the noisy target changes the query only ...
    assert not torch.allclose(q1, q0) and torch.equal(k1, k0) and torch.equal(v1, v0)
    # ... the history changes keys and values only
    assert (
        torch.equal(q2, q0)
        and not torch.allclose(k2, k0)
        and not torch.allclose(v2, v0)
    )
    assert not torch.allclose(new_target, base) and not torch.allclose(
        new_history, base
    )
    # one query row per position, differing through lambda_i: ratio ~ delta
    guidance = x_t + model.step_embedding(t)
    ratio = q0 / guidance.unsqueeze(1)
    assert ratio.mean().item() == pytest.approx(0.001, abs=2e-4)
    assert not torch.allclose(q0[:, 0], q0[:, 1])


def test_sum_conditioning_has_no_cross_attention():
    assert not hasattr(make_model(conditioning="sum"), "cross_attention")


def test_offset_noise_is_one_shift_per_sample_shared_by_channels():
    target = torch.zeros(4000, 16)
    with_offset = make_model(offset_noise=0.5)
    without = make_model(offset_noise=0.0)
    torch.manual_seed(4)
    noisy = with_offset.training_noise(target)
    torch.manual_seed(4)
    plain = without.training_noise(target)
    shift = noisy - plain  # [B H]
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))  # shared over H
    assert shift[:, 0].std().item() == pytest.approx(0.5, rel=0.06)
    assert abs(shift[:, 0].mean().item()) < 0.03
    assert plain.std().item() == pytest.approx(1.0, rel=0.03)


def test_offset_noise_acts_in_training_only():
    """The x_t that reaches the approximator in training carries the offset.

    Both models draw t and then the N(0, I) noise first, so under one seed
    their x_t differ by exactly ``sqrt(1 - abar_t) * 0.5 * delta_c``: one
    shift per row, the same on every channel, with std 0.5 over rows. Read
    from the approximator's input, not from ``training_noise``, so an offset
    drawn but never added (or noise drawn again in ``q_sample``) fails here.
    """
    with_offset = make_model(DiffuRecSys, offset_noise=0.5)
    without = make_model(DiffuRecSys, offset_noise=0.0)
    without.load_state_dict(with_offset.state_dict())
    rows = [[(5 * r + j) % 19 + 1 for j in range(1 + r % 5)] for r in range(2000)]
    big_batch = make_batch(rows)
    seen = {}
    for name, model in (("with", with_offset), ("without", without)):
        model.eval()  # no dropout draws before the noise; the loss is the same code
        original = model.approximate

        def spy(history, mask, last, x_t, t, name=name, original=original):
            seen[name] = (x_t.detach(), t)
            return original(history, mask, last, x_t, t)

        model.approximate = spy
        loss_under_seed(model, big_batch)
        del model.approximate
    (x_with, t), (x_without, t_without) = seen["with"], seen["without"]
    assert torch.equal(t, t_without)
    scale = with_offset.diffusion.sqrt_one_minus_alphas_cumprod[t].unsqueeze(1)
    shift = (x_with - x_without) / scale  # [B H], 0.5 delta_c per row
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift), atol=1e-4, rtol=0)
    assert shift[:, 0].std().item() == pytest.approx(0.5, rel=0.08)

    batch = make_batch(SEQUENCES)
    with_offset.eval(), without.eval()
    torch.testing.assert_close(
        scores_under_seed(with_offset, batch),
        scores_under_seed(without, batch),
        rtol=0,
        atol=0,
    )


# --------------------------------------------------------------------------- #
# training step
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("conditioning", ["sum", "cross_attention"])
def test_loss_is_cross_entropy_and_gradients_reach_every_part(conditioning):
    model = make_model(conditioning=conditioning)
    batch = make_batch(SEQUENCES)
    loss = loss_under_seed(model, batch)
    assert 0 < loss.item() < 50
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name

    # the loss is CE of x0_hat . E^T against the target, over all items
    model.eval()
    torch.manual_seed(1)
    t = model.diffusion.sample_timesteps((4,), "cpu")
    target = batch["item_id"]
    x_t = model.diffusion.q_sample(model.item_embedding(target), t, torch.randn(4, 16))
    logits = _approximate(model, batch, x_t, t) @ model.item_embedding.weight.t()
    expected = torch.nn.functional.cross_entropy(logits, target)
    torch.testing.assert_close(loss_under_seed(model, batch), expected)


# --------------------------------------------------------------------------- #
# inference
# --------------------------------------------------------------------------- #
def test_inference_is_reproducible_under_a_seed():
    model = make_model(DiffuRecSys).eval()
    batch = make_batch(SEQUENCES)
    first = scores_under_seed(model, batch, seed=5)
    assert first.shape == (4, N_ITEMS)
    assert torch.equal(first, scores_under_seed(model, batch, seed=5))
    assert not torch.equal(first, scores_under_seed(model, batch, seed=6))  # stochastic


@pytest.mark.parametrize("ensemble_size", [1, 3])
def test_predict_agrees_with_full_sort_predict(ensemble_size):
    model = make_model(DiffuRecSys, ensemble_size=ensemble_size).eval()
    batch = make_batch(SEQUENCES, targets=[1, 20, 7, 7])
    full = scores_under_seed(model, batch, seed=2)
    one = scores_under_seed(model, batch, seed=2, method="predict")
    torch.testing.assert_close(
        one, full.gather(1, batch["item_id"].unsqueeze(1)).squeeze(1)
    )


def test_ensemble_averages_probabilities_of_chains_run_as_one_batch():
    ensemble = make_model(DiffuRecSys, ensemble_size=3).eval()
    single = make_model(DiffuRecSys, ensemble_size=1).eval()
    single.load_state_dict(ensemble.state_dict())
    batch = make_batch(SEQUENCES)
    repeated = make_batch(SEQUENCES * 3)  # chain j of row b at j * B + b
    scores = scores_under_seed(ensemble, batch, seed=8)
    logits = scores_under_seed(single, repeated, seed=8).view(3, 4, N_ITEMS)
    mean_probability = torch.softmax(logits, dim=-1).mean(0)
    torch.testing.assert_close(scores.exp(), mean_probability)
    assert scores.shape == (4, N_ITEMS)


def test_full_chain_runs_every_step_and_respaced_chain_fewer():
    model = make_model().eval()
    steps = []
    model.step_embedding.register_forward_pre_hook(
        lambda m, args: steps.append(args[0][0].item())
    )
    scores_under_seed(model, make_batch(SEQUENCES))
    assert steps == list(range(7, -1, -1))
    steps.clear()
    model.inference_steps = 3
    scores = scores_under_seed(model, make_batch(SEQUENCES))
    assert steps == [7, 4, 0] and torch.isfinite(scores).all()


# --------------------------------------------------------------------------- #
# real runs through the plugin pipeline
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "model, conditioning, offset, chains",
    [
        ("DiffuRec", "sum", 0.0, 1),
        ("DiffuRecSys-Baseline", "sum", 0.0, 1),
        ("DiffuRecSys-V1", "cross_attention", 0.0, 1),
        ("DiffuRecSys-V2", "cross_attention", 0.1, 1),
        ("DiffuRecSys", "cross_attention", 0.1, 1),
        ("DiffuRecSys-Ensemble", "cross_attention", 0.1, 5),
    ],
)
def test_one_epoch_through_the_pipeline(
    tiny_config, model, conditioning, offset, chains
):
    from recbole_diffusion.quick_start import run_recbole_diffusion

    result = run_recbole_diffusion(
        model=model,
        dataset="tiny",
        config_dict={**tiny_config, "n_layers": 2, "diffusion_steps": 8},
        saved=True,
    )
    config = result["config"]
    assert config["conditioning"] == conditioning and config["offset_noise"] == offset
    assert config["ensemble_size"] == chains
    for metrics in (result["best_valid_result"], result["test_result"]):
        assert 0 <= metrics["ndcg@10"] <= metrics["hit@10"] <= 1
        assert not math.isnan(metrics["mrr@10"])
    assert os.path.isfile(result["model_file"])


def test_real_batches(tiny_config):
    from recbole_diffusion.quick_start import build_pipeline

    config, dataset, train_data, _, test_data, model = build_pipeline(
        model="DiffuRecSys",
        dataset="tiny",
        config_dict={**tiny_config, "n_layers": 1, "diffusion_steps": 4},
    )
    assert isinstance(model, DiffuRecSys)
    loss = model.calculate_loss(next(iter(train_data)))
    assert torch.isfinite(loss)
    interaction, _, _, _ = next(iter(test_data))
    model.eval()
    scores = scores_under_seed(model, interaction)
    assert scores.shape == (len(interaction), dataset.item_num)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize(
    "model, conditioning, offset, weight_decay",
    [
        ("DiffuRec", "sum", 0.0, 0.0),
        ("DiffuRecSys-Baseline", "sum", 0.0, 1e-4),
        ("DiffuRecSys-V1", "cross_attention", 0.0, 1e-4),
        ("DiffuRecSys-V2", "cross_attention", 0.1, 1e-4),
        ("DiffuRecSys", "cross_attention", 0.1, 1e-4),
    ],
)
def test_variants_are_configs_of_one_model(
    tiny_config, model, conditioning, offset, weight_decay
):
    from recbole_diffusion.config import build_config

    config = build_config(model, "tiny", config_dict=tiny_config)
    assert config["conditioning"] == conditioning
    assert config["offset_noise"] == offset
    assert config["weight_decay"] == weight_decay
    assert config["ensemble_size"] == 1 and config["inference_steps"] is None
