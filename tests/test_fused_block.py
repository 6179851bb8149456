"""ADRec's block as one autograd function: the module's values, gradients and stream."""

import pytest
import torch
from conftest import UnitDataset, unit_config
from test_adrec import make_batch

from recbole_diffusion.model import fused_block
from recbole_diffusion.model.adrec import ADRec

HIDDEN = 16


def make_model(dtype=torch.float64, **overrides):
    config = unit_config(
        "ADRec",
        **{
            "hidden_size": HIDDEN,
            "inner_size": 32,
            "n_heads": 2,
            "diffusion_steps": 8,
            "MAX_ITEM_LIST_LENGTH": 7,
            "hidden_dropout_prob": 0.3,
            "attn_dropout_prob": 0.3,
            **overrides,
        },
    )
    torch.manual_seed(0)
    return ADRec(config, UnitDataset()).to(dtype)


def block_step(block, hidden, seed=5):
    """Output, cache, gradients (input and every parameter) and the next draw."""
    torch.manual_seed(seed)
    output, cache = block(hidden)
    upstream = torch.randn_like(output)  # an arbitrary gradient from above
    gradients = torch.autograd.grad(output, [hidden, *block.parameters()], upstream)
    return output, cache, gradients, torch.rand(3), output.grad_fn


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"hidden_act": "relu"},
        {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0},
        {"hidden_dropout_prob": 0.0},
        {"attn_dropout_prob": 0.0},
    ],
    ids=["gelu", "relu", "no-dropout", "attention-dropout-only", "hidden-dropout-only"],
)
def test_fused_block_gives_the_modules_output_gradients_and_stream(overrides):
    """In float64 with dropout on, the written-out backward equals autograd's
    through the module to 1e-12: catches a transposed product, a missed
    scale, a mask left out of the backward (or applied twice), the residual's
    gradient dropped, keys and values swapped, and masks drawn in another
    order or shape (the output and the next draw differ)."""
    block = make_model(**overrides).adm.blocks[0].train()
    hidden = torch.randn(3, 6, HIDDEN, dtype=torch.float64, requires_grad=True)
    block.fused_training = False
    module = block_step(block, hidden)
    block.fused_training = True
    fused = block_step(block, hidden)
    assert type(fused[4]).__name__ == "_CausalBlockBackward"
    assert type(module[4]).__name__ != "_CausalBlockBackward"
    torch.testing.assert_close(fused[0], module[0], rtol=0, atol=1e-12)
    for got, expected in zip(fused[1], module[1]):  # keys and values
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        assert not got.requires_grad
    names = ["input"] + [name for name, _ in block.named_parameters()]
    for name, got, expected in zip(names, fused[2], module[2]):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12, msg=name)
    torch.testing.assert_close(fused[3], module[3], rtol=0, atol=0)


def test_dropout_really_acts_in_the_fused_block():
    """Two seeds give two outputs (a fused block that dropped nothing would
    match a module whose dropout was also off: this keeps the test above
    honest about testing masks)."""
    block = make_model().cam.blocks[1].train()
    hidden = torch.randn(2, 5, HIDDEN, dtype=torch.float64, requires_grad=True)
    first = block_step(block, hidden, seed=1)[0]
    second = block_step(block, hidden, seed=2)[0]
    assert (first - second).abs().max() > 1e-3


@pytest.mark.parametrize(
    "overrides",
    [{"hidden_act": "swish"}, {"hidden_act": "gelu_tanh"}, {"fast_dropout": False}],
    ids=["swish", "gelu-tanh", "torch-dropout"],
)
def test_unsupported_settings_run_the_module(overrides):
    """An activation without a written-out derivative, or torch's own dropout
    (whose stream the function cannot draw), falls back to the module:
    catches a fused block that silently computed GELU for another activation."""
    block = make_model(**overrides).adm.blocks[0].train()
    hidden = torch.randn(3, 6, HIDDEN, dtype=torch.float64, requires_grad=True)
    assert not fused_block.supports(block, hidden)
    grad_fn = block_step(block, hidden)[4]
    assert type(grad_fn).__name__ != "_CausalBlockBackward"


def test_other_devices_and_torch_dropout_modules_run_the_module():
    """The attention's fast flag alone does not decide: a tensor on another
    device, or a block whose dropout is torch's (swapped in after
    construction), is not fused."""
    block = make_model().adm.blocks[0].train()
    hidden = torch.randn(3, 6, HIDDEN, dtype=torch.float64, requires_grad=True)
    assert fused_block.supports(block, hidden)
    # another device (its dropout is torch's): the meta device stands in
    assert not fused_block.supports(block, hidden.detach().to("meta"))
    block.dropout = torch.nn.Dropout(block.dropout.p)
    assert not fused_block.supports(block, hidden)


def test_evaluation_and_no_grad_run_the_module():
    model = make_model()
    block = model.adm.blocks[0]
    hidden = torch.randn(2, 4, HIDDEN, dtype=torch.float64, requires_grad=True)
    assert type(block.eval()(hidden)[0].grad_fn).__name__ != "_CausalBlockBackward"
    with torch.no_grad():
        assert block.train()(hidden)[0].grad_fn is None


def test_the_switch_reaches_every_block():
    assert all(block.fused_training for block in make_model().adm.blocks)
    switched = make_model(fused_block=False)
    blocks = [*switched.cam.blocks, *switched.adm.blocks]
    assert blocks and not any(block.fused_training for block in blocks)


@pytest.mark.parametrize("stage", [1, 3])
def test_training_step_of_the_model_is_the_modules(stage):
    """The whole float32 loss and every gradient of ADRec with fused blocks
    equal those with the modules, at the pre-training stage (the CAM alone)
    and at joint training (CAM and ADM): catches the function wired to the
    wrong block or its input (CAM against ADM), or the cache mixed up."""
    results = []
    for fused in (False, True):
        model = make_model(dtype=torch.float32, fused_block=fused).train()
        model.stage = stage
        batch = make_batch([[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12, 13, 14, 15]])
        torch.manual_seed(3)
        loss = model.calculate_loss(batch)
        total = sum(loss) if isinstance(loss, tuple) else loss
        total.backward()
        results.append(
            (
                total.detach(),
                {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
            )
        )
    (module_loss, module_grads), (fused_loss, fused_grads) = results
    torch.testing.assert_close(fused_loss, module_loss, rtol=1e-6, atol=1e-6)
    assert fused_grads.keys() == module_grads.keys()
    assert any(name.startswith("cam.") for name in fused_grads)
    assert any(name.startswith("adm.") for name in fused_grads) == (stage == 3)
    for name, gradient in module_grads.items():
        torch.testing.assert_close(
            fused_grads[name], gradient, rtol=1e-4, atol=1e-6, msg=name
        )
