"""CDDRec: decoder masks, batch independence, losses, negatives, augmentations, runs."""

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import (
    UNIT_N_ITEMS,
    UnitDataset,
    hand_metrics,
    trained_parts,
    unit_config,
)
from recbole.data.interaction import Interaction

import recbole_diffusion.config as config_module
from recbole_diffusion.config import build_config, props_dir
from recbole_diffusion.data import TARGET_LIST_PREFIX, WholeSequenceDataset
from recbole_diffusion.model.cddrec import CDDRec
from recbole_diffusion.quick_start import (
    build_pipeline,
    load_data_and_model,
    run_recbole_diffusion,
)
from recbole_diffusion.registry import get_trainer
from recbole_diffusion.utils import ConfigError

N_ITEMS = UNIT_N_ITEMS
TARGET_SEQ = TARGET_LIST_PREFIX + "item_id_list"
SEQUENCES = [[3, 4, 5], [7, 1, 2, 9, 11], [12, 13], [2, 4, 6, 8, 10, 12]]


def make_config(**overrides):
    """The model's yaml defaults, shrunk to test size, as a plain dict."""
    return unit_config(
        "CDDRec",
        **{
            "hidden_size": 16,
            "inner_size": 32,
            "n_heads": 2,
            "diffusion_steps": 6,
            "MAX_ITEM_LIST_LENGTH": 6,
            **overrides,
        },
    )


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return CDDRec(make_config(**overrides), UnitDataset())


def make_batch(sequences=SEQUENCES, width=6, last_targets=None):
    """Training-style rows: right-padded inputs and the next item everywhere."""
    rows, targets = [], []
    for index, sequence in enumerate(sequences):
        last = last_targets[index] if last_targets else sequence[-1] % 20 + 1
        padding = [0] * (width - len(sequence))
        rows.append(list(sequence) + padding)
        targets.append(list(sequence[1:]) + [last] + padding)
    return Interaction(
        {
            "item_id_list": torch.tensor(rows),
            "item_length": torch.tensor([len(s) for s in sequences]),
            "item_id": torch.tensor(
                [t[len(s) - 1] for t, s in zip(targets, sequences)]
            ),
            TARGET_SEQ: torch.tensor(targets),
        }
    )


# --------------------------------------------------------------------------- #
# property files and the per-dataset settings
# --------------------------------------------------------------------------- #
CDDREC_FILES = [
    "CDDRec.yaml",
    "CDDRec-beauty.yaml",
    "CDDRec-toys.yaml",
    "CDDRec/amazon-beauty.yaml",
    "CDDRec/amazon-toys.yaml",
]


@pytest.mark.parametrize("name", CDDREC_FILES)
def test_property_files_have_one_annotated_key_per_line(name):
    for line in (props_dir() / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.match(r"^\w+: \S+ +# \((int|float|str|bool)\) \S", line), line


def test_defaults_are_the_papers():
    defaults = yaml.safe_load((props_dir() / "CDDRec.yaml").read_text())
    expected = {
        "n_layers": 1,
        "n_heads": 4,
        "hidden_size": 128,
        "hidden_dropout_prob": 0.0,
        "attn_dropout_prob": 0.2,
        "decoder_dropout_prob": 0.2,
        "initializer_range": 0.02,
        "diffusion_steps": 20,
        "noise_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.002,
        "tau": 0.5,
        "cl_weight": 0.3,
        "aug_crop_ratio": 0.6,
        "aug_mask_ratio": 0.3,
        "aug_reorder_ratio": 0.6,
        "cd_score": "dot",
        "score": "cos",
        "train_batch_size": 128,
        "learning_rate": 0.001,
    }
    assert {key: defaults[key] for key in expected} == expected


@pytest.mark.parametrize(
    "model, dataset, steps, beta_end, length",
    [
        ("CDDRec", "amazon-beauty", 30, 0.1, 20),
        ("CDDRec", "amazon-toys", 25, 0.002, 20),
        ("CDDRec", "ml-1m", 20, 0.002, 50),
        ("CDDRec-beauty", "tiny", 30, 0.1, 20),
        ("CDDRec-toys", "tiny", 25, 0.002, 20),
    ],
)
def test_paper_settings_per_dataset(
    model, dataset, steps, beta_end, length, tiny_config
):
    overrides = {"data_path": tiny_config["data_path"]} if dataset == "tiny" else {}
    config = build_config(model=model, dataset=dataset, config_dict=overrides)
    assert config["model"] == "CDDRec"
    assert config["diffusion_steps"] == steps
    assert config["beta_end"] == beta_end
    assert config["MAX_ITEM_LIST_LENGTH"] == length


def test_variants_and_dataset_files_agree_and_user_settings_win():
    for variant, dataset in [("beauty", "amazon-beauty"), ("toys", "amazon-toys")]:
        variant_file = yaml.safe_load(
            (props_dir() / f"CDDRec-{variant}.yaml").read_text()
        )
        dataset_file = yaml.safe_load(
            (props_dir() / "CDDRec" / f"{dataset}.yaml").read_text()
        )
        assert variant_file == dataset_file
    config = build_config(
        model="CDDRec",
        dataset="amazon-beauty",
        config_dict={"diffusion_steps": 7},
        cmd_args={"MAX_ITEM_LIST_LENGTH": "9"},
    )
    assert (config["diffusion_steps"], config["MAX_ITEM_LIST_LENGTH"]) == (7, 9)


def test_model_dataset_file_comes_after_dataset_props_and_before_user_files(
    tmp_path, monkeypatch, tiny_config
):
    """The config.py layer ``props/<Model>/<dataset>.yaml``, in isolation."""
    root = tmp_path / "props"
    (root / "datasets").mkdir(parents=True)
    (root / "CDDRec").mkdir()
    for name in ("overall.yaml", "CDDRec.yaml", "DuoRec.yaml"):
        (root / name).write_text((props_dir() / name).read_text())
    layers = {
        root / "datasets" / "tiny.yaml": {"p_a": "dataset", "p_b": "dataset"},
        root / "CDDRec" / "tiny.yaml": {"p_a": "model_dataset", "p_b": "model_dataset"},
        tmp_path / "user.yaml": {"p_b": "user"},
    }
    for path, content in layers.items():
        path.write_text(yaml.safe_dump(content))
    monkeypatch.setattr(config_module, "props_dir", lambda: root)
    config = build_config(
        model="CDDRec",
        dataset="tiny",
        config_file_list=[str(tmp_path / "user.yaml")],
        config_dict=tiny_config,
    )
    assert (config["p_a"], config["p_b"]) == ("model_dataset", "user")
    other = build_config(model="DuoRec", dataset="tiny", config_dict=tiny_config)
    assert other["p_a"] == "dataset"


@pytest.mark.parametrize(
    "key, value",
    [
        ("cd_score", "cos"),
        ("score", "kl"),
        ("tau", 0),
        ("cl_weight", -0.1),
        ("diffusion_steps", 0),
        ("beta_end", 1.5),
        ("noise_schedule", "square"),
        ("aug_crop_ratio", 0.0),
        ("aug_reorder_ratio", 1.2),
        ("aug_mask_ratio", 1.0),
        ("decoder_dropout_prob", 1.0),
        ("step_chunk_size", 0),
        ("hidden_size", 15),
    ],
)
def test_invalid_hyperparameters_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        make_model(**{key: value})


def test_pipeline_refuses_before_loading_data(tiny_config):
    with pytest.raises(ConfigError, match="cd_score"):
        build_config("CDDRec", "tiny", config_dict={**tiny_config, "cd_score": "l2"})


# --------------------------------------------------------------------------- #
# encoder and decoder: causality, padding, users kept apart
# --------------------------------------------------------------------------- #
def test_decoder_attends_causally_and_never_to_padding():
    model = make_model().eval()
    batch = make_batch()
    item_seq = batch["item_id_list"]
    steps = torch.arange(model.num_steps)
    with torch.no_grad():
        context = model.encode(item_seq)
        _, probs = model.decoder(context, item_seq != 0, steps, return_attention=True)
    length = item_seq.size(1)
    future = torch.ones(length, length, dtype=torch.bool).triu(1)  # [Lq Lk]
    padded_key = (item_seq == 0)[:, None, :]  # [B 1 Lk]
    forbidden = future.unsqueeze(0) | padded_key  # [B Lq Lk]
    assert probs.shape == (4, model.num_steps, 2, length, length)
    assert probs.masked_select(forbidden[:, None, None]).abs().max() == 0
    # Every real query attends somewhere: its weights sum to one.
    assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-6)


def test_changing_a_later_item_leaves_earlier_positions_unchanged():
    model = make_model().eval()
    item_seq = make_batch()["item_id_list"]
    changed = item_seq.clone()
    changed[1, 3] = 17  # position 3 of a sequence of length 5
    steps = torch.arange(model.num_steps)
    with torch.no_grad():
        before = model.denoise(item_seq, steps)  # [B S L H]
        after = model.denoise(changed, steps)
    assert torch.allclose(before[:, :, :3], after[:, :, :3], atol=1e-6)
    assert not torch.allclose(before[1, :, 3:5], after[1, :, 3:5], atol=1e-3)
    assert torch.allclose(before[[0, 2, 3]], after[[0, 2, 3]], atol=1e-6)


def test_padding_states_never_reach_real_positions():
    model = make_model().eval()
    item_seq = make_batch()["item_id_list"]
    real = item_seq != 0
    steps = torch.arange(model.num_steps)
    with torch.no_grad():
        context = model.encode(item_seq)
        garbage = context.masked_scatter(~real.unsqueeze(-1), torch.randn_like(context))
        clean = model.decoder(context, real, steps)
        noisy = model.decoder(garbage, real, steps)
    real_positions = real[:, None, :, None].expand_as(clean)
    assert torch.allclose(clean[real_positions], noisy[real_positions], atol=1e-6)
    assert not torch.allclose(clean, noisy, atol=1e-3)  # padded queries do change


def test_users_in_a_batch_do_not_influence_each_other():
    model = make_model().eval()
    batch = make_batch()
    order = torch.tensor([2, 0, 3, 1])
    shuffled = Interaction({key: batch[key][order] for key in batch.interaction})
    steps = torch.arange(model.num_steps)
    with torch.no_grad():
        outputs = model.denoise(batch["item_id_list"], steps)
        shuffled_outputs = model.denoise(shuffled["item_id_list"], steps)
        alone = model.denoise(batch["item_id_list"][1:2], steps)
        scores = model.full_sort_predict(batch)
        shuffled_scores = model.full_sort_predict(shuffled)
    assert torch.allclose(shuffled_outputs, outputs[order], atol=1e-6)
    assert torch.allclose(alone[0], outputs[1], atol=1e-6)
    assert torch.allclose(shuffled_scores, scores[order], atol=1e-6)


def test_inference_is_step_zero_mean_at_the_last_position():
    model = make_model().eval()
    batch = make_batch()
    lengths = batch["item_length"]
    with torch.no_grad():
        every = model.denoise(batch["item_id_list"], torch.tensor([0]))[:, 0]
        preference = model.forward(batch["item_id_list"], lengths)
        again = model.forward(batch["item_id_list"], lengths)
    assert torch.allclose(preference, every[torch.arange(4), lengths - 1], atol=1e-6)
    assert torch.equal(preference, again)  # the mean: no noise at inference


@pytest.mark.parametrize("score", ["cos", "dot"])
def test_predict_agrees_with_full_sort_predict(score):
    model = make_model(score=score).eval()
    batch = make_batch()
    with torch.no_grad():
        full = model.full_sort_predict(batch)
        single = model.predict(batch)
    assert full.shape == (4, N_ITEMS)  # the mask token is never ranked
    assert torch.allclose(single, full[torch.arange(4), batch["item_id"]], atol=1e-6)
    if score == "cos":
        assert full.abs().max() <= 1 + 1e-6


def test_mask_token_has_its_own_vector():
    model = make_model()
    masked = torch.tensor([[3, model.mask_token_id, 0]])
    embedded = model.embed_items(masked)
    assert torch.equal(embedded[0, 1], model.mask_embedding)
    assert torch.equal(embedded[0, 0], model.item_embedding.weight[3])


# --------------------------------------------------------------------------- #
# losses
# --------------------------------------------------------------------------- #
def _groups(model):
    return {
        "encoder": list(model.trm_encoder.parameters()),
        "decoder": [
            p for n, p in model.decoder.named_parameters() if "step_embedding" not in n
        ],
        "step embedding": [model.decoder.step_embedding.weight],
        "item embedding": [model.item_embedding.weight],
    }


@pytest.mark.parametrize("term", ["cd", "in_view", "cross_view"])
def test_each_loss_term_is_positive_finite_and_reaches_every_part(term):
    model = make_model()
    torch.manual_seed(3)
    value = model.loss_terms(make_batch())[term]
    assert torch.isfinite(value) and value > 0
    value.backward()
    for name, parameters in _groups(model).items():
        grads = [p.grad for p in parameters if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), (term, name)
    # All T steps are trained: every row of the step table gets a gradient.
    assert (model.decoder.step_embedding.weight.grad.abs().sum(1) > 0).all()


@pytest.mark.parametrize("cd_score", ["dot", "kl"])
def test_total_loss_combines_terms_with_weight(cd_score):
    model = make_model(cd_score=cd_score, cl_weight=0.7)
    batch = make_batch()
    torch.manual_seed(4)
    terms = model.loss_terms(batch)
    torch.manual_seed(4)
    loss = model.calculate_loss(batch)
    expected = terms["cd"] + 0.7 * (terms["in_view"] + terms["cross_view"])
    assert torch.allclose(loss, expected)


def test_step_loss_follows_eq_2_4_5_and_weight(monkeypatch):
    """One step by hand: x_hat = mu + sqrt(v) z, pos = q_sample, weight 1/(i+1)."""
    model = make_model().eval()
    batch = make_batch()
    step = 3
    noise = {}

    def recorded_randn_like(tensor):
        noise[len(noise)] = torch.randn(tensor.shape)
        return noise[len(noise) - 1]

    item_seq, targets = batch["item_id_list"], batch[TARGET_SEQ]
    rows, positions = (targets > 0).nonzero(as_tuple=True)
    tokens = (rows, positions)
    x0 = model.item_embedding(targets[targets > 0])
    negative_emb = model.item_embedding(torch.full_like(rows, 20))
    context = model.encode(item_seq)
    steps = torch.tensor([step])
    pair_mask = torch.zeros_like(rows, dtype=torch.bool)
    monkeypatch.setattr(torch, "randn_like", recorded_randn_like)
    cd, _, _ = model._step_losses(
        context, item_seq != 0, tokens, x0, negative_emb, pair_mask, steps
    )
    mu = model.decoder.decode_tokens(context, item_seq != 0, steps, rows, positions)[0]
    diffusion = model.diffusion
    x_hat = mu + diffusion.posterior_variance[step].sqrt() * noise[0][0]
    positive = (
        diffusion.sqrt_alphas_cumprod[step] * x0
        + diffusion.sqrt_one_minus_alphas_cumprod[step] * noise[1][0]
    )
    by_hand = (
        -torch.log(torch.sigmoid((x_hat * positive).sum(-1)))
        - torch.log(1 - torch.sigmoid((x_hat * negative_emb).sum(-1)))
    ).mean() / (step + 1)
    assert torch.allclose(cd, by_hand, atol=1e-6)


def test_all_three_terms_and_their_step_weights_match_closed_forms(monkeypatch):
    """Independent values: one-hot items and a decoder that outputs chosen vectors.

    Items are one-hot vectors ``e_t`` and the noise is switched off, so the
    corrupted target is ``sqrt(abar_i) e_t``. The decoder returns ``e_t + a``
    at every token of the sequences and ``e_t + b`` at every token of the
    augmented views, ``a`` and ``b`` two spare axes. With N = 9 distinct
    targets, tau = 0.5 and s = 1 / sqrt(2), at every step:

    - in-view (x_hat against the target): an ``x_hat`` token sees its partner
      at cosine s, the other N - 1 ``x_hat`` at 1/2 and N - 1 targets at 0; a
      target token sees its partner at s and 2N - 2 tokens at 0;
    - cross-view (x_hat against the augmented view): every token sees its
      partner and the N - 1 tokens of its own view at 1/2, N - 1 at 0;
    - cross-divergence (dot): ``log(1 + e^(-sqrt(abar_i))) + log 2`` (the
      negative is orthogonal to the output).

    Each step's term is divided by i + 1: the contrastive totals are the
    per-step value times the harmonic number H_T.
    """
    steps_count, tau, hidden = 6, 0.5, 32
    model = make_model(diffusion_steps=steps_count, tau=tau, hidden_size=hidden)
    sequences = [[1, 2, 3], [5, 6, 7, 8], [10, 11]]
    batch = make_batch(sequences, last_targets=[4, 9, 12])
    targets = batch[TARGET_SEQ]
    n_tokens = int((targets > 0).sum())
    assert n_tokens == 9 and len(set(targets[targets > 0].tolist())) == 9
    with torch.no_grad():
        model.item_embedding.weight.copy_(torch.eye(N_ITEMS, hidden))
    model.diffusion.posterior_variance.zero_()  # x_hat = mu
    model.diffusion.sqrt_one_minus_alphas_cumprod.zero_()  # pos = sqrt(abar) x0
    # the mask view: every target token has its pair at the same position
    monkeypatch.setattr(
        model, "augment", lambda seq, length: (seq, length, torch.zeros_like(length))
    )
    one_hot = torch.eye(N_ITEMS, hidden)
    spare = torch.eye(hidden)[[hidden - 2, hidden - 1]]  # a, b

    def decoder(context, real, steps, batch_index, position_index):
        augmented = (batch_index >= len(sequences)).long()
        rows = batch_index % len(sequences)
        out = one_hot[targets[rows, position_index]] + spare[augmented]
        return out.expand(steps.numel(), -1, -1)

    monkeypatch.setattr(model.decoder, "decode_tokens", decoder)
    terms = model.loss_terms(batch)

    harmonic = sum(1 / (i + 1) for i in range(steps_count))
    n, s = n_tokens, 1 / math.sqrt(2)
    x_hat_token = -s / tau + math.log(
        math.exp(s / tau) + (n - 1) * math.exp(0.5 / tau) + (n - 1)
    )
    target_token = -s / tau + math.log(math.exp(s / tau) + 2 * (n - 1))
    in_view = harmonic * (x_hat_token + target_token) / 2
    cross = harmonic * (-0.5 / tau + math.log(n * math.exp(0.5 / tau) + n - 1))
    betas = [1e-4 + (0.002 - 1e-4) * i / (steps_count - 1) for i in range(steps_count)]
    alpha_bar = [math.prod(1 - b for b in betas[: i + 1]) for i in range(steps_count)]
    cd = sum(
        (math.log(1 + math.exp(-math.sqrt(a))) + math.log(2)) / (i + 1)
        for i, a in enumerate(alpha_bar)
    )
    assert terms["in_view"].item() == pytest.approx(in_view, rel=1e-5)
    assert terms["cross_view"].item() == pytest.approx(cross, rel=1e-5)
    assert terms["cd"].item() == pytest.approx(cd, rel=1e-5)
    loss = model.calculate_loss(batch).item()
    assert loss == pytest.approx(cd + 0.3 * (in_view + cross), rel=1e-5)


def test_kl_score_is_minus_the_gaussian_kl():
    model = make_model(cd_score="kl")
    a, b = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    steps = torch.tensor([0, 4])
    variance = model.diffusion.posterior_variance
    expected = -((a - b) ** 2).sum(-1) / (2 * variance[[1, 4]].unsqueeze(1))
    assert torch.allclose(model.divergence_score(a, b, steps), expected)


def test_info_nce_matches_direct_computation():
    model = make_model(tau=0.7)
    torch.manual_seed(1)
    view_a, view_b = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    for step in range(2):
        z = F.normalize(torch.cat([view_a[step], view_b[step]]), dim=-1)
        n = len(z)
        expected = 0.0
        for k in range(n):
            partner = (k + n // 2) % n
            others = torch.stack(
                [torch.exp(z[k] @ z[m] / 0.7) for m in range(n) if m != k]
            )
            expected += -torch.log(torch.exp(z[k] @ z[partner] / 0.7) / others.sum())
        assert torch.allclose(
            model.info_nce(view_a, view_b)[step], expected / n, atol=1e-5
        )


@pytest.mark.parametrize("tau", [0.05, 0.5, 1.0])
def test_fast_info_nce_gives_the_cross_entropy_forms_loss_and_gradients(tau):
    """Catches the fast NT-Xent's hand-written backward pass wrong (a missing
    transposed term, a per-row shift that breaks the symmetry it relies on,
    the partner correction on one side only) or its loss off."""
    torch.manual_seed(2)
    view_a = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    view_b = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(3, dtype=torch.float64)
    results = {}
    for fast in (True, False):
        model = make_model(tau=tau, fast_info_nce=fast).double()
        loss = model.info_nce(view_a, view_b)
        grads = torch.autograd.grad((loss * weights).sum(), (view_a, view_b))
        results[fast] = (loss, grads)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=0, atol=1e-12)
    for fast_grad, slow_grad in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(fast_grad, slow_grad, rtol=0, atol=1e-12)


def test_fast_nt_xent_per_token_losses_and_gradients():
    """Catches a partner correction that assumes every token's loss has the
    same weight (info_nce averages them, so only a per-token weight shows it),
    a self-pair left in, a wrong partner."""
    from recbole_diffusion.model.nt_xent import nt_xent

    torch.manual_seed(5)
    raw = torch.randn(2, 10, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 10, dtype=torch.float64)
    tokens = F.normalize(raw, dim=-1)
    fast = nt_xent(tokens, 0.3)
    logits = tokens @ tokens.transpose(1, 2) / 0.3
    logits = logits.masked_fill(torch.eye(10, dtype=torch.bool), float("-inf"))
    partner = ((torch.arange(10) + 5) % 10).repeat(2)
    slow = F.cross_entropy(logits.reshape(20, 10), partner, reduction="none")
    torch.testing.assert_close(fast, slow.view(2, 10), rtol=0, atol=1e-12)
    (fast_grad,) = torch.autograd.grad((fast * weights).sum(), raw, retain_graph=True)
    (slow_grad,) = torch.autograd.grad((slow.view(2, 10) * weights).sum(), raw)
    torch.testing.assert_close(fast_grad, slow_grad, rtol=0, atol=1e-12)


def test_fast_info_nce_leaves_the_training_loss_unchanged():
    """Catches the switch changing anything else of a training step (the same
    draws on both sides, so the losses must agree to float rounding)."""
    batch = make_batch()
    losses = {}
    for fast in (True, False):
        model = make_model(seed=3, fast_info_nce=fast)
        model.train()
        torch.manual_seed(4)
        losses[fast] = model.calculate_loss(batch)
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-6)


def test_only_real_targets_are_trained_and_steps_run_in_one_call(monkeypatch):
    model = make_model()
    batch = make_batch()
    calls = []
    original = model.decoder.decode_tokens

    def spy(context, real, steps, batch_index, position_index, **kwargs):
        calls.append((context.shape, steps.clone(), batch_index, position_index))
        return original(context, real, steps, batch_index, position_index, **kwargs)

    monkeypatch.setattr(model.decoder, "decode_tokens", spy)
    encodes = []
    original_encode = model.encode
    monkeypatch.setattr(
        model, "encode", lambda seq: encodes.append(seq.shape) or original_encode(seq)
    )
    model.calculate_loss(batch)
    assert encodes == [(8, 6)]  # the sequences and their views, together
    assert len(calls) == 1
    shape, steps, rows, positions = calls[0]
    assert shape[0] == 8 and torch.equal(steps, torch.arange(model.num_steps))
    targets = batch[TARGET_SEQ]
    n_targets = int((targets > 0).sum())
    original_tokens = set(
        zip(rows[:n_targets].tolist(), positions[:n_targets].tolist())
    )
    assert original_tokens == set(map(tuple, (targets > 0).nonzero().tolist()))
    assert (rows[n_targets:] >= 4).all()  # the rest are augmented-view tokens


@pytest.mark.parametrize("view", ["crop", "mask", "reorder"])
def test_cross_view_pairs_hold_the_same_item_slot(monkeypatch, view):
    torch.manual_seed(5)
    model = make_model()
    sequences = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11], [12, 13, 14, 15], [16, 17]]
    batch = make_batch(sequences)
    augment = getattr(model, f"augment_{view}")
    views = []
    monkeypatch.setattr(
        model,
        "augment",
        lambda seq, length: views.append(augment(seq, length)) or views[-1],
    )
    captured = []
    step_losses = model._step_losses

    def spy(context, real, tokens, x0, negative_emb, pair_mask, steps):
        captured.append((tokens, pair_mask))
        return step_losses(context, real, tokens, x0, negative_emb, pair_mask, steps)

    monkeypatch.setattr(model, "_step_losses", spy)
    model.calculate_loss(batch)
    (rows, positions), pair_mask = captured[0]
    aug_seq, aug_len, offset = views[0]
    both_views = torch.cat([batch["item_id_list"], aug_seq])
    n_targets = int(pair_mask.numel())
    original = rows[:n_targets][pair_mask], positions[:n_targets][pair_mask]
    augmented = rows[n_targets:], positions[n_targets:]
    assert augmented[0].numel() > 0
    assert torch.equal(augmented[0], original[0] + len(sequences))  # same user
    assert torch.equal(augmented[1], original[1] - offset[original[0]])
    assert (augmented[1] < aug_len[original[0]]).all()
    if view == "crop":
        # the same item sits in both slots (all items are distinct here)
        assert torch.equal(both_views[augmented], both_views[original])
        assert (offset > 0).any()  # some crops really start later
    # every original position whose slot exists in the view is paired
    lengths = batch["item_length"][rows[:n_targets]]
    in_view = (positions[:n_targets] - offset[rows[:n_targets]] >= 0) & (
        positions[:n_targets] - offset[rows[:n_targets]] < aug_len[rows[:n_targets]]
    )
    assert torch.equal(pair_mask, in_view & (positions[:n_targets] < lengths))


def test_step_chunks_give_the_same_loss_and_gradients():
    """Chunked steps (recomputed in backward) equal one call over all steps."""
    batch = make_batch()
    results = []
    for chunk in (None, 2):
        model = make_model(step_chunk_size=chunk).eval()  # no dropout
        # Chunks draw the per-step noise in another order: switch it off.
        model.diffusion.posterior_variance.zero_()
        model.diffusion.sqrt_one_minus_alphas_cumprod.zero_()
        torch.manual_seed(9)
        loss = model.calculate_loss(batch)
        loss.backward()
        results.append((loss.detach(), model.item_embedding.weight.grad.clone()))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)
    model = make_model(step_chunk_size=4)  # training mode, with noise
    assert torch.isfinite(model.calculate_loss(batch))


def test_loss_is_deterministic_under_a_seed():
    batch = make_batch()
    losses = []
    for _ in range(2):
        model = make_model(seed=5)
        torch.manual_seed(11)
        losses.append(model.calculate_loss(batch))
    assert torch.equal(losses[0], losses[1])
    torch.manual_seed(12)
    assert not torch.equal(model.calculate_loss(batch), losses[0])


# --------------------------------------------------------------------------- #
# negatives and augmentations
# --------------------------------------------------------------------------- #
def test_negatives_never_come_from_the_users_row_and_are_uniform():
    model = make_model()
    batch = make_batch()
    item_seq, targets = batch["item_id_list"], batch[TARGET_SEQ]
    repeats = 400
    torch.manual_seed(0)
    negatives = model.sample_negatives(
        item_seq.repeat(repeats, 1), targets.repeat(repeats, 1)
    )
    for row in range(4):
        members = set(item_seq[row].tolist()) | set(targets[row].tolist())
        drawn = negatives[row::4].flatten()
        allowed = set(range(1, N_ITEMS)) - members
        assert set(drawn.tolist()) == allowed
        counts = torch.bincount(drawn, minlength=N_ITEMS)[sorted(allowed)].float()
        expected = drawn.numel() / len(allowed)
        assert (counts - expected).abs().max() < 0.25 * expected


def test_negative_of_a_row_missing_one_item_is_that_item():
    model = make_model()
    item_seq = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    targets = torch.tensor([[11, 12, 13, 14, 15, 16, 18, 19, 20, 20]])  # 17 absent
    negatives = model.sample_negatives(item_seq, targets)
    assert (negatives == 17).all()


LONG = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0, 0]])


def _many(sequence, length, repeats=200):
    return sequence.repeat(repeats, 1), torch.full((repeats,), length)


def test_crop_keeps_a_contiguous_60_percent_window():
    model = make_model()
    item_seq, lengths = _many(LONG, 10)
    cropped, kept, start = model.augment_crop(item_seq, lengths)
    assert (kept == 6).all()
    assert set(start.tolist()) == set(range(5))
    for row in range(len(cropped)):
        s = int(start[row])
        assert cropped[row, :6].tolist() == LONG[0, s : s + 6].tolist()
        assert (cropped[row, 6:] == 0).all()
    short, short_kept, _ = model.augment_crop(
        torch.tensor([[4, 0, 0]]), torch.tensor([1])
    )
    assert short.tolist() == [[4, 0, 0]] and short_kept.tolist() == [1]


def test_mask_replaces_30_percent_of_the_items():
    model = make_model()
    item_seq, lengths = _many(LONG, 10)
    masked, masked_len, offset = model.augment_mask(item_seq, lengths)
    is_mask = masked == model.mask_token_id
    assert (is_mask.sum(1) == 3).all() and not is_mask[:, 10:].any()
    assert torch.equal(masked[~is_mask], item_seq[~is_mask])
    assert torch.equal(masked_len, lengths) and (offset == 0).all()
    assert is_mask[:, :10].float().mean(0).min() > 0.1  # any position can be hit


def test_reorder_shuffles_a_60_percent_window_only():
    model = make_model()
    item_seq, lengths = _many(LONG, 10)
    reordered, reordered_len, _ = model.augment_reorder(item_seq, lengths)
    assert torch.equal(reordered_len, lengths)
    assert torch.equal(reordered.sort(1).values, item_seq.sort(1).values)
    changed = reordered != item_seq
    assert (changed[:, 10:] == 0).all()
    for row in changed:
        moved = row.nonzero().flatten()
        if len(moved):
            assert int(moved.max() - moved.min()) < 6
    assert changed.any(1).float().mean() > 0.9


def test_each_sequence_gets_one_augmentation_drawn_uniformly():
    model = make_model()
    item_seq, lengths = _many(LONG, 10, repeats=600)
    torch.manual_seed(0)
    augmented, aug_len, offset = model.augment(item_seq, lengths)
    crop = aug_len == 6
    mask = (augmented == model.mask_token_id).any(1)
    reorder = ~crop & ~mask
    assert not (crop & mask).any()
    assert (offset[~crop] == 0).all()
    for chosen in (crop, mask, reorder):
        assert abs(chosen.float().mean() - 1 / 3) < 0.07


# --------------------------------------------------------------------------- #
# through RecBole's pipeline
# --------------------------------------------------------------------------- #
def test_real_batches_are_whole_sequences(tiny_config):
    _, _, train_data, valid_data, _, model = build_pipeline(
        model="CDDRec",
        dataset="tiny",
        config_dict={**tiny_config, "diffusion_steps": 3},
    )
    assert isinstance(train_data._dataset, WholeSequenceDataset)
    batch = next(iter(train_data))
    targets = batch[TARGET_SEQ]
    lengths = batch["item_length"]
    assert torch.equal((targets > 0).sum(1), lengths)
    loss = model.calculate_loss(batch)
    assert torch.isfinite(loss)
    with torch.no_grad():
        scores = model.eval().full_sort_predict(next(iter(valid_data))[0])
    assert torch.isfinite(scores).all()


CDDREC_PARTS = (
    "item_embedding",
    "position_embedding",
    "trm_encoder",
    "decoder.step_embedding",
    "decoder.query",
    "decoder.feed_forward",
)


def test_one_epoch_through_the_pipeline(tiny_config):
    """Catches: a loss that leaves a part of the model untrained, and test
    metrics that are not those of the saved model (recomputed here by hand)."""
    initial = build_pipeline(
        model="CDDRec",
        dataset="tiny",
        config_dict={**tiny_config, "diffusion_steps": 4},
    )[-1].state_dict()
    result = run_recbole_diffusion(
        model="CDDRec",
        dataset="tiny",
        config_dict={**tiny_config, "diffusion_steps": 4},
        saved=True,
    )
    assert result["config"]["model"] == "CDDRec"
    _, model, _, _, _, test_data = load_data_and_model(result["model_file"])
    trained = model.state_dict()
    assert trained_parts(initial, trained, CDDREC_PARTS) == set(CDDREC_PARTS)
    by_hand = hand_metrics(model, test_data)
    for metric, value in by_hand.items():
        assert result["test_result"][metric] == pytest.approx(value, abs=1e-4)


def test_learns_a_task_that_needs_more_than_the_last_item(recall_data_path, tmp_path):
    """Catches: a model that does not learn, or reads the last item alone.

    The next item is an earlier item of the history, never the last one
    (``conftest.write_recall_dataset``): chance is HR@10 = 0.25. Measured at
    seed 2020: 0.22 before, 1.0 after 10 epochs.
    """
    config_dict = {
        "data_path": recall_data_path,
        "checkpoint_dir": str(tmp_path),
        "hidden_size": 32,
        "inner_size": 64,
        "n_heads": 2,
        "diffusion_steps": 4,
        "MAX_ITEM_LIST_LENGTH": 10,
        "train_batch_size": 32,
        "eval_batch_size": 256,
        "learning_rate": 0.005,
        "epochs": 10,
        "show_progress": False,
        "worker": 0,
        "seed": 2020,
        "reproducibility": True,
        "state": "ERROR",
    }
    config, _, train_data, _, test_data, model = build_pipeline(
        "CDDRec", "recall", config_dict=config_dict
    )
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    before = hand_metrics(model, test_data)
    # no validation: its targets are unpredictable here, only the test counts
    trainer.fit(train_data, None, saved=False, show_progress=False)
    after = hand_metrics(model, test_data)
    assert before["hit@10"] < 0.4
    assert after["hit@10"] > 0.7
    assert after["ndcg@10"] > before["ndcg@10"] + 0.3


def _nt_xent_reference(raw, tau):
    """Per-token NT-Xent by the cross-entropy form, [S M]."""
    tokens = F.normalize(raw, dim=-1)
    steps, count, _ = tokens.shape
    logits = tokens @ tokens.transpose(1, 2) / tau
    logits = logits.masked_fill(torch.eye(count, dtype=torch.bool), float("-inf"))
    partner = ((torch.arange(count) + count // 2) % count).repeat(steps)
    losses = F.cross_entropy(logits.reshape(-1, count), partner, reduction="none")
    return losses.view(steps, count)


def test_nt_xent_workspace_reuses_memory_and_keeps_results(monkeypatch):
    """Catches a reused buffer whose stale contents leak into the result (a
    view of the wrong size or stride, a pass skipped on part of it), a
    workspace that never reuses (the page faults it exists to avoid), and
    two live graphs handed the same buffer (in_view and cross_view of one
    step)."""
    from recbole_diffusion.model import nt_xent as module

    monkeypatch.setattr(module, "POOL_MIN_BYTES", 0)  # pool these tiny matrices
    workspace = module.Workspace()
    torch.manual_seed(6)
    # a large call, a smaller one (reusing the large buffer), two live at once
    shapes = [(2, 12, 4), (2, 8, 4), (3, 10, 4), (3, 6, 4), (3, 12, 4)]
    raws = [
        torch.randn(shape, dtype=torch.float64, requires_grad=True) for shape in shapes
    ]
    weights = [torch.rand(shape[:2], dtype=torch.float64) for shape in shapes]

    first = module.nt_xent(F.normalize(raws[0], dim=-1), 0.3, workspace)
    (first * weights[0]).sum().backward()
    kept = list(workspace._free)
    assert len(kept) == 1
    second = module.nt_xent(F.normalize(raws[1], dim=-1), 0.3, workspace)
    assert workspace._free == []  # the kept buffer is in use again
    exps = second.grad_fn.saved_tensors[1]  # E, computed into that buffer
    assert exps.data_ptr() == kept[0].data_ptr()
    (second * weights[1]).sum().backward()
    assert workspace._free[0].data_ptr() == kept[0].data_ptr()
    assert workspace._free[0].numel() == kept[0].numel()
    # two graphs alive at once get two buffers
    third = module.nt_xent(F.normalize(raws[2], dim=-1), 0.3, workspace)
    fourth = module.nt_xent(F.normalize(raws[3], dim=-1), 0.3, workspace)
    ((third * weights[2]).sum() + (fourth * weights[3]).sum()).backward()
    assert len(workspace._free) == 2
    # larger than both kept buffers: they are released before a new one is
    # made (memory peaks at the new size, not at all three)
    fifth = module.nt_xent(F.normalize(raws[4], dim=-1), 0.3, workspace)
    assert workspace._free == []
    (fifth * weights[4]).sum().backward()
    assert [buffer.numel() >= 3 * 12 * 12 for buffer in workspace._free] == [True]

    for raw, weight, fast in zip(raws, weights, (first, second, third, fourth, fifth)):
        reference_raw = raw.detach().clone().requires_grad_()
        slow = _nt_xent_reference(reference_raw, 0.3)
        (slow * weight).sum().backward()
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
        torch.testing.assert_close(raw.grad, reference_raw.grad, rtol=0, atol=1e-12)


def test_nt_xent_workspace_refuses_a_second_backward(monkeypatch):
    """Catches gradients computed from a matrix that went back to the
    workspace (and may hold another call's values)."""
    from recbole_diffusion.model import nt_xent as module

    monkeypatch.setattr(module, "POOL_MIN_BYTES", 0)
    raw = torch.randn(2, 6, 3, requires_grad=True)
    loss = module.nt_xent(F.normalize(raw, dim=-1), 0.5, module.Workspace()).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()
    # without a workspace (or below its size) the graph stays reusable
    loss = module.nt_xent(F.normalize(raw, dim=-1), 0.5).sum()
    loss.backward(retain_graph=True)
    loss.backward()


def test_cddrec_workspace_is_emptied_for_evaluation_and_not_copied(monkeypatch):
    """Catches gigabytes of NT-Xent buffers held through evaluation, and a
    deep copy of the model (RecBole's and the tuners' copies) duplicating or
    sharing them."""
    from recbole_diffusion.model import nt_xent as module

    monkeypatch.setattr(module, "POOL_MIN_BYTES", 0)
    model = make_model(seed=3)
    model.train()
    model.calculate_loss(make_batch()).backward()
    assert model.nt_xent_workspace.kept_bytes > 0
    copied = copy.deepcopy(model)
    assert copied.nt_xent_workspace is not model.nt_xent_workspace
    assert copied.nt_xent_workspace.kept_bytes == 0
    model.eval()
    assert model.nt_xent_workspace.kept_bytes == 0


def test_nt_xent_under_checkpointing_frees_its_matrix_until_backward(monkeypatch):
    """Catches the graph holding the workspace buffer itself (not only the
    saved E): under activation checkpointing (CDDRec's step_chunk_size) every
    chunk's E would then stay alive until backward, the memory that
    checkpointing exists to save. The gradients must still be the plain
    call's."""
    import gc
    import weakref

    from torch.utils.checkpoint import checkpoint

    from recbole_diffusion.model import nt_xent as module

    monkeypatch.setattr(module, "POOL_MIN_BYTES", 0)
    handed_out = []
    original_take = module.Workspace.take

    def recording_take(self, shape, dtype, device):
        buffer, view = original_take(self, shape, dtype, device)
        handed_out.append(weakref.ref(buffer))
        return buffer, view

    monkeypatch.setattr(module.Workspace, "take", recording_take)
    workspace = module.Workspace()
    torch.manual_seed(8)
    raw = torch.randn(2, 8, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(2, 8, dtype=torch.float64)

    def loss_of(tokens):
        return (
            module.nt_xent(F.normalize(tokens, dim=-1), 0.4, workspace) * weights
        ).sum()

    loss = checkpoint(loss_of, raw, use_reentrant=False)
    gc.collect()
    assert len(handed_out) == 1 and handed_out[0]() is None  # freed after forward
    loss.backward()  # recomputes: a second buffer, given back after backward
    assert len(handed_out) == 2 and len(workspace._free) == 1
    reference = raw.detach().clone().requires_grad_()
    (_nt_xent_reference(reference, 0.4) * weights).sum().backward()
    torch.testing.assert_close(raw.grad, reference.grad, rtol=0, atol=1e-12)


def test_nt_xent_workspace_drops_its_smallest_buffer_wherever_it_is():
    """Catches dropping the smallest buffer with list.remove, which compares
    tensors with == on its way to it (an error for buffers of other sizes),
    and dropping any buffer but the smallest."""
    from recbole_diffusion.model.nt_xent import Workspace

    workspace = Workspace(max_free=2)
    large, small, middle = torch.empty(30), torch.empty(10), torch.empty(20)
    for buffer in (large, small, middle):
        workspace.give_back(buffer)
    assert [buffer.numel() for buffer in workspace._free] == [30, 20]
    workspace.give_back(torch.empty(25))  # the smallest kept is now last
    assert sorted(buffer.numel() for buffer in workspace._free) == [25, 30]


def test_nt_xent_workspace_pools_cpu_matrices_only(monkeypatch):
    """Catches pooling on a GPU (whose caching allocator already reuses
    memory; a pooled GPU buffer would only hold memory) and pooling matrices
    below the size at which fresh memory costs page faults."""
    from recbole_diffusion.model import nt_xent as module

    workspace = module.Workspace()
    buffer, view = workspace.take((2, 64, 64), torch.float32, torch.device("cpu"))
    assert buffer is None and view.shape == (2, 64, 64)  # 32 KiB: not pooled
    monkeypatch.setattr(module, "POOL_MIN_BYTES", 0)
    buffer, view = workspace.take((2, 3, 3), torch.float32, torch.device("meta"))
    assert buffer is None and view.device.type == "meta"
    buffer, view = workspace.take((2, 3, 3), torch.float32, torch.device("cpu"))
    assert buffer is not None and view.data_ptr() == buffer.data_ptr()


def test_nt_xent_workspace_edges(monkeypatch):
    """Catches a buffer of another dtype handed out or crowding out the
    current dtype's, a wrong pooling boundary, small matrices pooled (or
    their graph refused a second backward) because a workspace was passed, a
    forward without backward that loses its buffer, and second-order
    gradients computed from a matrix that may have been reused."""
    from recbole_diffusion.model import nt_xent as module

    monkeypatch.setattr(module, "POOL_MIN_BYTES", 2 * 6 * 6 * 4)  # [2 6 6] float32
    workspace = module.Workspace()
    buffer, _ = workspace.take((2, 6, 6), torch.float32, torch.device("cpu"))
    assert buffer is not None  # at the boundary: pooled
    assert workspace.take((2, 5, 5), torch.float32, torch.device("cpu"))[0] is None

    raw = torch.randn(2, 4, 3, requires_grad=True)  # below: not pooled, reusable
    loss = module.nt_xent(F.normalize(raw, dim=-1), 0.5, workspace).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    assert workspace._free == []

    for dtype in (torch.float64, torch.float64, torch.float32):
        raw = torch.randn(2, 8, 3, dtype=dtype, requires_grad=True)
        module.nt_xent(F.normalize(raw, dim=-1), 0.5, workspace).sum().backward()
        assert {buffer.dtype for buffer in workspace._free} == {dtype}
    with torch.no_grad():  # no backward to come: the buffer comes back at once
        module.nt_xent(F.normalize(raw, dim=-1), 0.5, workspace)
    assert len(workspace._free) == 1

    raw = torch.randn(2, 8, 3, requires_grad=True)
    loss = module.nt_xent(F.normalize(raw, dim=-1), 0.5, workspace).sum()
    with pytest.raises(RuntimeError, match="second-order"):
        torch.autograd.grad(loss, raw, create_graph=True)
