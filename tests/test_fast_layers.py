"""The training speed-ups give the slow paths' results.

Each fast path is checked against an independent value (a closed form, torch's
own layer, a binomial bound), not against its own formula.
"""

import contextlib
import importlib
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction
from test_model_contracts import MODELS, SEQUENCES, make_batch, make_model

import recbole_diffusion.fast_layers as fast_layers
from recbole_diffusion.allocator import keep_freed_memory
from recbole_diffusion.config import build_config
from recbole_diffusion.data import TARGET_LIST_PREFIX
from recbole_diffusion.fast_layers import (
    CrossEntropyLoss,
    FastDropout,
    TanhGELU,
    attention,
    cross_entropy,
    fast_dropout,
    tanh_gelu,
    use_fast_layers,
)
from recbole_diffusion.quick_start import build_pipeline
from recbole_diffusion.registry import _anomaly_mode_kept, get_trainer

ELEMENTS = 200_000  # from MIN_ELEMENTS on: a stream seeded through SeedSequence
SMALL = 20_480  # below: the stream's state drawn from torch (ADRec's activations)


def _drop_probability(p):
    return round(p * 65536) / 65536


@pytest.mark.parametrize("elements", [ELEMENTS, SMALL])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_fast_dropout_drops_p_and_scales_the_rest_to_keep_the_mean(p, elements):
    """Catches a wrong threshold (p drop vs 1 - p), a scale of 1/p or none, and
    a mask read from fewer random bits than it needs (a biased fraction), for
    both ways of starting a mask's stream."""
    assert (elements >= fast_layers.MIN_ELEMENTS) == (elements == ELEMENTS)
    x = torch.ones(elements)
    y = fast_dropout(x, p)
    dropped = (y == 0).float()
    rounded = _drop_probability(p)
    sigma = math.sqrt(rounded * (1 - rounded) / elements)
    assert abs(dropped.mean().item() - p) < 5 * sigma
    kept = y[y != 0]
    torch.testing.assert_close(
        kept, torch.full_like(kept, 1 / (1 - rounded)), rtol=1e-6, atol=0
    )
    # each of the four 16-bit lanes of a 64-bit draw drops at rate p (a lane
    # read twice or left constant would show here)
    lanes = dropped.view(-1, 4)
    assert ((lanes.mean(0) - p).abs() < 5 * sigma * 2).all(), lanes.mean(0)
    # and independently of each other: neighbours drop together at p^2
    together = (lanes[:, 0] * lanes[:, 1]).mean().item()
    assert abs(together - rounded**2) < 5 * math.sqrt(rounded**2 / (elements / 4))


@pytest.mark.parametrize("elements", [ELEMENTS, SMALL])
def test_fast_dropout_is_seeded_by_torch_and_new_at_every_call(elements):
    """Catches masks that repeat from call to call (a fixed stream or state)
    or that ignore torch's seed (a run could not be repeated, nor resumed)."""
    x = torch.ones(elements)
    torch.manual_seed(7)
    first, second = fast_dropout(x, 0.2), fast_dropout(x, 0.2)
    assert not torch.equal(first, second)
    # independent draws overlap in their drops at p^2
    both = ((first == 0) & (second == 0)).float().mean().item()
    assert abs(both - 0.04) < 5 * math.sqrt(0.04 * 0.96 / elements)
    torch.manual_seed(7)
    assert torch.equal(fast_dropout(x, 0.2), first)
    torch.manual_seed(8)
    assert not torch.equal(fast_dropout(x, 0.2), first)


@pytest.mark.parametrize("elements", [ELEMENTS, SMALL])
def test_fast_dropout_gradient_is_the_forward_mask(elements):
    """Catches a backward pass that draws a new mask or forgets the scale."""
    x = torch.randn(elements, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(elements, dtype=torch.float64)
    y = fast_dropout(x, 0.25)
    (y * weights).sum().backward()
    factor = y.detach() / x.detach()  # 0 or 1 / (1 - p) per element
    torch.testing.assert_close(x.grad, weights * factor)


def test_dropout_is_the_identity_in_eval_mode_and_at_p_zero():
    """Catches the mask applied in eval mode or at p = 0."""
    x = torch.randn(ELEMENTS)
    module = FastDropout(0.5)
    module.eval()
    assert module(x) is x
    assert fast_dropout(x, 0.0) is x
    assert torch.equal(fast_dropout(x[:10], 0.5, training=False), x[:10])


def test_recbole_feed_forward_gelu_becomes_the_same_exact_gelu():
    """Catches RecBole's erf GELU swapped for another function (the tanh
    approximation differs by up to 1e-3, too little for a model-level check
    at initialisation scale)."""
    model = make_model("SASRec+", dropout=0.1)
    feed_forwards = [m for m in model.modules() if hasattr(m, "intermediate_act_fn")]
    assert feed_forwards
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    closed_form = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    for module in feed_forwards:
        assert module.intermediate_act_fn is not module.gelu  # swapped
        torch.testing.assert_close(
            module.intermediate_act_fn(x), closed_form, rtol=0, atol=1e-12
        )


def test_tanh_gelu_matches_the_closed_form_and_its_derivative():
    """Catches a wrong constant in the sigmoid form (2z, 0.044715) or in the
    hand-written backward pass."""
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64, requires_grad=True)
    inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    closed_form = 0.5 * x * (1 + torch.tanh(inner))
    (expected_grad,) = torch.autograd.grad(closed_form.sum(), x)
    y = tanh_gelu(x)
    torch.testing.assert_close(y, closed_form.detach(), rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)
    # float32, as the models run it: torch's own tanh GELU to float rounding
    x32 = torch.randn(10_000) * 3
    torch.testing.assert_close(
        TanhGELU()(x32), F.gelu(x32, approximate="tanh"), rtol=1e-5, atol=1e-6
    )
    with torch.no_grad():  # the inference path skips the autograd function
        torch.testing.assert_close(
            tanh_gelu(x.detach()), closed_form.detach(), rtol=0, atol=1e-12
        )


def test_tanh_gelu_makes_no_denormal_floats():
    """Catches the sigmoid form without its floor: for inputs near -9.5 its
    gate is a denormal float32, which the backward pass then reads (slow
    arithmetic), where torch's tanh form saturates."""
    # the inputs whose sigmoid argument 2 sqrt(2/pi) (x + 0.044715 x^3) lies
    # in the band around -88 where float32's sigmoid is denormal
    grid = torch.linspace(-12, -8, 400_001, dtype=torch.float64)
    argument = 2 * math.sqrt(2 / math.pi) * (grid + 0.044715 * grid**3)
    band = grid[(argument > -88.7) & (argument < -87.3)]
    assert band.numel() > 100
    x = torch.cat([band, torch.linspace(-40, -5, 1000, dtype=torch.float64)])
    x = x.float().requires_grad_(True)
    y = tanh_gelu(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    tiny = torch.finfo(torch.float32).tiny  # smallest normal float32
    for values in (y.detach(), grad, fast_layers._gate(x.detach())):
        assert not ((values != 0) & (values.abs() < tiny)).any()
    # torch's 1 + tanh(z) cancels near -5 (float32 rounding of 1e-7)
    torch.testing.assert_close(y, F.gelu(x, approximate="tanh"), rtol=0, atol=1e-6)


def test_written_out_attention_is_torchs_attention():
    """Catches a wrong scale, a mask applied the wrong way round, or keys and
    queries swapped in the attention path whose dropout is fast_dropout."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 5, 4) for _ in range(3))
    allowed = torch.rand(3, 1, 1, 5) > 0.3
    allowed[..., 0] = True  # every query sees at least one key
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    identity = fast_layers.fast_dropout
    try:
        fast_layers.fast_dropout = lambda x, p, training=True, whole=None: x  # no drops
        got = attention(q, k, v, attn_mask=allowed, dropout_p=0.1, fast=True)
    finally:
        fast_layers.fast_dropout = identity
    torch.testing.assert_close(got, expected)
    # with dropout, some attention weights are dropped: the output moves
    dropped = attention(q, k, v, attn_mask=allowed, dropout_p=0.5, fast=True)
    assert not torch.allclose(dropped, expected)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_dropout_and_tanh_gelu_is_swapped_and_the_switches_work(name):
    """Catches a model that skips use_fast_layers, a dropout module left out
    of the swap, and switches that do not switch."""
    model = make_model(name, dropout=0.1)
    kinds = {type(m) for m in model.modules()}
    assert torch.nn.Dropout not in kinds and FastDropout in kinds
    assert not any(
        type(m) is torch.nn.GELU and m.approximate == "tanh" for m in model.modules()
    )
    slow = make_model(name, dropout=0.1)
    assert use_fast_layers(slow, {"fast_dropout": False, "fast_gelu": False}) == 0
    state = slow.state_dict()
    assert list(state) == list(model.state_dict())  # no parameter added or lost


def _cross_entropy_both_ways(logits, targets, upstream=1.0):
    """(loss, gradient) of the fast path and of ``F.cross_entropy``."""
    results = []
    for loss_function in (cross_entropy, F.cross_entropy):
        leaf = logits.detach().clone().requires_grad_()
        loss = loss_function(leaf, targets)
        (loss * upstream).backward()
        results.append((loss.detach(), leaf.grad))
    return results


def test_fast_cross_entropy_is_torchs_loss_and_gradient():
    """Catches a wrong log-sum-exp (the log of the largest probability left
    out, or the maximum logit), the target read at the wrong column, the
    gradient not scaled by the upstream gradient over the rows, or the
    one-hot subtracted at the wrong place. float64: agreement to 1e-12."""
    generator = torch.Generator().manual_seed(0)
    for spread in (0.1, 3.0, 40.0):  # flat, typical and near-one-hot softmaxes
        logits = spread * torch.randn(30, 17, dtype=torch.float64, generator=generator)
        targets = torch.randint(0, 17, (30,), generator=generator)
        (fast, fast_grad), (torch_loss, torch_grad) = _cross_entropy_both_ways(
            logits, targets, upstream=2.5
        )
        torch.testing.assert_close(fast, torch_loss, rtol=0, atol=1e-12)
        torch.testing.assert_close(fast_grad, torch_grad, rtol=0, atol=1e-12)


def test_fast_cross_entropy_survives_a_vanishing_target_probability():
    """Catches a loss read as -log P[target]: at a logit 200 below the rest
    the target's probability is 0 in float32 and that form gives inf; the
    log-sum-exp form gives 200. -inf logits (DuoRec's self-pairs) stay out."""
    logits = torch.zeros(4, 6)
    logits[:, 0] = -200.0
    logits[:, 5] = float("-inf")
    targets = torch.zeros(4, dtype=torch.long)
    (fast, fast_grad), (torch_loss, torch_grad) = _cross_entropy_both_ways(
        logits, targets
    )
    assert torch.isfinite(fast) and abs(float(fast) - (200.0 + math.log(4))) < 1e-3
    torch.testing.assert_close(fast, torch_loss)
    torch.testing.assert_close(fast_grad, torch_grad)
    assert torch.all(fast_grad[:, 5] == 0)


def test_fast_cross_entropy_refuses_a_second_backward_and_hands_other_cases_to_torch():
    """Catches a second backward through the same graph that silently reuses
    the gradient written into the kept softmax, and cases the kept softmax
    does not cover (3-d logits, half precision) taking it anyway."""
    logits = torch.randn(5, 7, requires_grad=True)
    loss = cross_entropy(logits, torch.arange(5))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError):
        loss.backward()
    # [B C d] logits (a class dimension in the middle) are torch's loss
    logits3 = torch.randn(2, 7, 3)
    targets3 = torch.randint(0, 7, (2, 3))
    torch.testing.assert_close(
        cross_entropy(logits3, targets3), F.cross_entropy(logits3, targets3)
    )
    # half precision (autocast) is torch's loss, to the last bit of the gradient
    targets = torch.arange(500) % 37
    half = (3 * torch.randn(500, 37)).to(torch.bfloat16)
    gradients = [
        torch.autograd.grad(loss_function(leaf, targets), leaf)[0]
        for loss_function in (cross_entropy, F.cross_entropy)
        for leaf in [half.clone().requires_grad_()]
    ]
    assert torch.equal(*gradients)


def _fast_path_calls(monkeypatch):
    calls = []
    original = fast_layers._SoftmaxCrossEntropy.apply
    monkeypatch.setattr(
        fast_layers._SoftmaxCrossEntropy,
        "apply",
        lambda *args: calls.append(1) or original(*args),
    )
    return calls


@pytest.mark.parametrize(
    "logits, targets",
    [
        (torch.randn(4, 5).half(), torch.arange(4)),  # half precision
        (torch.randn(4, 5).bfloat16(), torch.arange(4)),
        (
            torch.randn(4, 5, device="meta"),
            torch.zeros(4, dtype=torch.long, device="meta"),
        ),
        (torch.randn(4, 5), torch.arange(4, dtype=torch.int32)),  # torch refuses int32
        (torch.randn(5, 7), torch.tensor([2])),  # one target for five rows
    ],
    ids=["float16", "bfloat16", "not-cpu", "int32-targets", "fewer-targets"],
)
def test_fast_cross_entropy_leaves_unsupported_inputs_to_torch(
    logits, targets, monkeypatch
):
    """Catches the kept softmax taken in half precision (autocast), off the
    CPU, or for targets torch refuses (a single target would broadcast over
    every row and give a loss where torch raises)."""
    calls = _fast_path_calls(monkeypatch)
    # torch's own error where torch refuses the input
    with contextlib.suppress(ValueError, RuntimeError):
        cross_entropy(logits, targets)
    assert not calls
    with pytest.raises((ValueError, RuntimeError)):
        cross_entropy(torch.randn(5, 7), torch.tensor([2]))


@pytest.mark.parametrize(
    "settings",
    [
        {"ignore_index": 0},
        {"weight": torch.ones(5)},
        {"label_smoothing": 0.1},
        {"reduction": "sum"},
    ],
    ids=["ignore_index", "weight", "label_smoothing", "sum"],
)
def test_losses_with_other_settings_keep_torchs_cross_entropy(settings):
    """Catches use_fast_layers swapping a loss whose settings the kept
    softmax does not implement (it would silently drop them)."""
    holder = torch.nn.Module()
    holder.loss = torch.nn.CrossEntropyLoss(**settings)
    use_fast_layers(holder, {})
    assert type(holder.loss) is torch.nn.CrossEntropyLoss
    plain = torch.nn.Module()
    plain.loss = torch.nn.CrossEntropyLoss()
    assert use_fast_layers(plain, {}) == 1 and isinstance(plain.loss, CrossEntropyLoss)


def _causal_attention_against_sdpa(monkeypatch, query, key, value):
    monkeypatch.setattr(
        fast_layers, "fast_dropout", lambda x, p, training=True, whole=None: x
    )
    got = attention(query, key, value, dropout_p=0.1, fast=True, is_causal=True)
    expected = F.scaled_dot_product_attention(query, key, value, is_causal=True)
    torch.testing.assert_close(got, expected)


def test_causal_attention_bias_per_length_pair_and_dtype(monkeypatch):
    """Catches a cached causal bias reused for another query length, key
    length or dtype, a bias aligned bottom-right instead of SDPA's top-left,
    a large negative number instead of -inf (queries aimed away from the
    allowed keys), and broadcast batch dimensions that break the batched
    product."""
    monkeypatch.setattr(fast_layers, "_causal_biases", {})
    generator = torch.Generator().manual_seed(0)
    for length, key_length, dtype in [
        (4, 4, torch.float32),
        (4, 4, torch.float64),
        (4, 6, torch.float32),
        (6, 4, torch.float32),
        (3, 6, torch.float32),
        (6, 6, torch.float32),
    ]:
        query = torch.randn(2, 2, length, 8, generator=generator, dtype=dtype)
        key = torch.randn(2, 2, key_length, 8, generator=generator, dtype=dtype)
        value = torch.randn(2, 2, key_length, 8, generator=generator, dtype=dtype)
        _causal_attention_against_sdpa(monkeypatch, query, key, value)
    query = 20 * torch.randn(1, 1, 5, 8, generator=generator)
    _causal_attention_against_sdpa(
        monkeypatch, query, -query, torch.randn(1, 1, 5, 8, generator=generator)
    )
    query = torch.randn(2, 2, 5, 8, generator=generator)
    key, value = (torch.randn(2, 1, 5, 8, generator=generator) for _ in range(2))
    _causal_attention_against_sdpa(monkeypatch, query, key, value)


def _training_batch(name):
    batch = make_batch()
    if name == "SASRec+":  # whole-sequence rows: the next item at every position
        item_seq = batch["item_id_list"]
        targets = torch.zeros_like(item_seq)
        targets[:, :-1] = item_seq[:, 1:]
        batch = Interaction(
            {**batch.interaction, TARGET_LIST_PREFIX + "item_id_list": targets}
        )
    return batch


@pytest.mark.parametrize("name", sorted(set(MODELS) - {"CDDRec"}))
def test_fast_cross_entropy_gives_each_models_loss_and_gradients(name, monkeypatch):
    """Catches a model whose cross-entropy does not take the fast path (a
    loss built after use_fast_layers, a contrastive loss that ignores the
    switch), a switch that does not switch, and a fast path that changes the
    loss or any parameter's gradient (same weights, same seed, dropout on)."""
    fast = make_model(name, dropout=0.2)
    slow = make_model(name, dropout=0.2, fast_cross_entropy=False)
    slow.load_state_dict(fast.state_dict())
    assert any(isinstance(m, CrossEntropyLoss) for m in fast.modules())
    assert not any(isinstance(m, CrossEntropyLoss) for m in slow.modules())
    batch = _training_batch(name)
    calls = _fast_path_calls(monkeypatch)
    losses = []
    for model in (fast, slow):
        model.train()
        torch.manual_seed(3)
        loss = model.calculate_loss(batch)
        loss = sum(loss) if isinstance(loss, tuple) else loss
        loss.backward()
        losses.append(loss.detach())
        if model is fast:
            fast_calls, calls[:] = len(calls), []
    assert fast_calls >= (2 if name == "DuoRec" else 1) and not calls
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-6)
    for (key, a), (_, b) in zip(fast.named_parameters(), slow.named_parameters()):
        assert (a.grad is None) == (b.grad is None), key
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def _with_torch_layers(model, gelu):
    """``model`` with torch's dropout put back (and, with ``gelu``, the
    original GELU forms): the slow side of a comparison."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, FastDropout):
                setattr(module, child_name, torch.nn.Dropout(child.p))
            elif gelu and isinstance(child, TanhGELU):
                setattr(module, child_name, torch.nn.GELU(approximate="tanh"))
        if gelu and getattr(module, "intermediate_act_fn", None) is F.gelu:
            module.intermediate_act_fn = module.gelu  # RecBole's own form
        if hasattr(module, "fast_attention_dropout"):
            module.fast_attention_dropout = False
    return model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fast_layers_change_no_output_at_evaluation(name):
    """Catches a fast layer that changes the model's function (GELU form,
    RecBole's feed-forward activation) or that acts in eval mode."""
    fast = make_model(name, dropout=0.3)
    model_class = MODELS[name][0]
    slow = _with_torch_layers(make_model(name, dropout=0.3), gelu=True)
    assert isinstance(fast, model_class)
    slow.load_state_dict(fast.state_dict())
    fast.eval(), slow.eval()
    batch = make_batch()
    torch.manual_seed(1)
    with torch.no_grad():
        fast_scores = fast.full_sort_predict(batch)
    torch.manual_seed(1)
    with torch.no_grad():
        slow_scores = slow.full_sort_predict(batch)
    assert fast_scores.shape[0] == len(SEQUENCES)
    torch.testing.assert_close(fast_scores, slow_scores, rtol=1e-5, atol=1e-5)


def test_training_with_fast_dropout_learns_like_torchs_dropout():
    """Catches a fast dropout that changes what a model learns in expectation:
    DiffuRec's training loss averaged over 40 dropout draws, both ways, on the
    same weights and batch, within three standard errors."""
    fast = make_model("DiffuRec", dropout=0.3)
    # the same tanh GELU form on both sides: only the dropout differs
    slow = _with_torch_layers(make_model("DiffuRec", dropout=0.3), gelu=False)
    slow.load_state_dict(fast.state_dict())
    batch = make_batch()
    losses = {}
    for label, model in (("fast", fast), ("slow", slow)):
        model.train()
        torch.manual_seed(5)
        with torch.no_grad():
            losses[label] = torch.stack(
                [model.calculate_loss(batch) for _ in range(40)]
            )
    difference = losses["fast"].mean() - losses["slow"].mean()
    standard_error = torch.sqrt(losses["fast"].var() / 40 + losses["slow"].var() / 40)
    assert abs(difference) < 3 * standard_error + 1e-6
    assert not torch.equal(losses["fast"], losses["slow"])  # different streams


def _fake_model_module(tmp_path, monkeypatch):
    package = tmp_path / "anomalous_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sets_anomaly.py").write_text(
        "import torch\ntorch.autograd.set_detect_anomaly(True)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "anomalous_models.sets_anomaly"


def test_importing_a_model_module_leaves_anomaly_detection_as_it_was(
    tmp_path, monkeypatch
):
    """Catches RecBole's sine.py (set_detect_anomaly(True) at import) turning
    on anomaly detection for the whole process: SASRec+ and DuoRec trained
    1.8x slower with it."""
    name = _fake_model_module(tmp_path, monkeypatch)
    # off, as a fresh process has it (the test modules' own imports of
    # RecBole's SASRec have already run sine.py in this one)
    torch.autograd.set_detect_anomaly(False)
    try:
        with _anomaly_mode_kept():
            importlib.import_module(name)
        assert not torch.is_anomaly_enabled()
    finally:
        torch.autograd.set_detect_anomaly(False)
        sys.modules.pop(name, None)


@pytest.mark.parametrize("model", ["SASRec+", "SASRec"])
def test_the_trainer_sets_anomaly_detection_and_fuses_adam(model, tiny_config):
    """Catches a trainer that leaves anomaly detection as an import left it,
    ignores detect_anomaly, or does not fuse Adam (RecBole's baselines too)."""
    torch.autograd.set_detect_anomaly(True)  # as RecBole's import leaves it
    try:
        config, _, train_data, _, _, network = build_pipeline(
            model=model, dataset="tiny", config_dict=dict(tiny_config)
        )
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, network)
        assert not torch.is_anomaly_enabled()
        assert all(g["fused"] for g in trainer.optimizer.param_groups)
        config["detect_anomaly"] = True
        config["fused_optimizer"] = False
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, network)
        assert torch.is_anomaly_enabled()
        assert not any(g["fused"] for g in trainer.optimizer.param_groups)
    finally:
        torch.autograd.set_detect_anomaly(False)


def test_fused_adam_takes_the_same_step_as_torchs_adam():
    """Catches a fused optimizer configured with other hyperparameters (the
    groups' lr, betas, weight decay) than the one it replaces."""
    torch.manual_seed(0)
    weights = [torch.randn(7, 5, requires_grad=True), torch.randn(5)]
    weights[1].requires_grad_(True)
    copies = [w.detach().clone().requires_grad_(True) for w in weights]
    plain = torch.optim.Adam(weights, lr=0.01, weight_decay=1e-3)
    fused = torch.optim.Adam(copies, lr=0.01, weight_decay=1e-3)
    for group in fused.param_groups:  # as TrainingModeMixin does
        group["fused"], group["foreach"] = True, None
    for _ in range(5):
        for group, optimizer in ((weights, plain), (copies, fused)):
            optimizer.zero_grad()
            (group[0] @ group[1]).pow(2).sum().backward()
            optimizer.step()
    for a, b in zip(weights, copies):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_switches_are_refused_when_not_booleans(tiny_config):
    """Catches fast_dropout being taken for a dropout probability (it ends in
    '_dropout') or a switch accepting any value."""
    for key in (
        "fast_dropout",
        "fast_gelu",
        "fused_optimizer",
        "detect_anomaly",
        "step_embedding_table",
        "fused_qkv",
        "fast_cross_entropy",
        "last_position_only",
    ):
        build_config("DiffuRec", "tiny", config_dict={**tiny_config, key: False})
        with pytest.raises(ValueError, match=key):
            build_config("DiffuRec", "tiny", config_dict={**tiny_config, key: 0.5})


_FAULTS = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    sys.path.insert(0, {root!r})
    if {keep}:
        from recbole_diffusion.allocator import keep_freed_memory
        assert keep_freed_memory()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        # 30 blocks of 4 MiB alive at once, then freed, as a training step's
        # activations are
        blocks = [np.ones(1 << 19) for _ in range(30)]
        del blocks
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    """
)


@pytest.mark.skipif(not keep_freed_memory(), reason="glibc's mallopt only")
def test_kept_memory_saves_the_page_faults_of_reallocating(tmp_path):
    """Catches mallopt settings that do not take (the trim threshold set
    before the mmap threshold freezes it at 128 KiB: every block faults)."""
    import recbole_diffusion

    root = str(__import__("pathlib").Path(recbole_diffusion.__file__).parents[1])
    faults = {}
    for keep in (False, True):
        done = subprocess.run(
            [sys.executable, "-c", _FAULTS.format(root=root, keep=keep)],
            capture_output=True,
            text=True,
            check=True,
        )
        faults[keep] = int(done.stdout.split()[-1])
    # 20 rounds of 30 x 1,024 pages fault ~600,000 times when the heap is
    # trimmed after each round (measured: 307,000 by default, 16,000 kept)
    assert faults[False] > 150_000
    assert faults[True] < faults[False] / 5
