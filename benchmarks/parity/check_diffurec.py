"""Equivalence checks of DiffuRec and DiffuRecSys against their reference codes.

DiffuRec: the whole model is compared (one approximator call, the training
loss, the reverse chain and the scores). DiffuRecSys: its approximator is not
the reference's (a documented deviation without a switch: softmax
cross-attention over positions instead of the reference's linear attention,
and a block loop that uses every block), so the check compares what the two
share: the self-attention block, and, with the reference's approximator
replaced by ours, its diffusion (schedule, forward noising, reverse chain,
loss and scores). The approximator's x0_hat is still measured, as a record
that is not expected to agree.
"""

import argparse
import contextlib

import torch

from benchmarks.parity.build import build_model, interaction
from benchmarks.parity.compare import comparison, histories, normal
from benchmarks.parity.draws import InjectedDraws
from benchmarks.parity.mapping import copy_weights
from benchmarks.parity.reference import import_reference

__all__ = ["check_diffurec", "check_diffurecsys"]

_NO_PADDING = (
    "full-length histories (no padding): the key- vs query-mask deviation cannot act"
)


def _args(sizes):
    return argparse.Namespace(
        hidden_size=sizes["hidden_size"],
        item_num=sizes["n_items"] - 1,  # the reference adds the padding row itself
        emb_dropout=0.3,
        dropout=0.1,
        max_len=sizes["length"],
        num_blocks=sizes["n_layers"],
        schedule_sampler_name="lossaware",
        diffusion_steps=sizes["steps"],
        lambda_uncertainty=0.001,
        noise_schedule="trunc_lin",
        rescale_timesteps=True,
        device="cpu",
    )


def _pair(model, reference_dir, sizes, **overrides):
    modules = import_reference(model, reference_dir, ["diffurec", "model"])
    ours = build_model(
        model,
        sizes["n_items"],
        hidden_size=sizes["hidden_size"],
        n_heads=sizes["n_heads"],
        n_layers=sizes["n_layers"],
        diffusion_steps=sizes["steps"],
        MAX_ITEM_LIST_LENGTH=sizes["length"],
        **overrides,
    ).eval()
    args = _args(sizes)
    reference = (
        modules["model"]
        .Att_Diffuse_model(modules["model"].create_model_diffu(args), args)
        .eval()
    )
    copy_weights(model, ours, reference)
    return ours, reference


@contextlib.contextmanager
def _steps(reference, t):
    """The reference's timestep sampler returns ``t`` (weights 1) for one call."""
    sampler = reference.diffu.schedule_sampler
    sampler.sample = lambda size, device: (t.clone(), torch.ones(size))
    try:
        yield
    finally:
        del sampler.sample


def _draws(generator, sizes):
    """The random numbers of one approximator call, one loss, one reverse chain."""
    batch, length, hidden = sizes["batch"], sizes["length"], sizes["hidden_size"]
    lam = normal(generator, batch, length, hidden)
    chain = [normal(generator, batch, hidden)]  # x_T
    for _ in range(sizes["steps"]):  # per step: lambda, then the step's noise
        chain += [
            normal(generator, batch, length, hidden),
            normal(generator, batch, hidden),
        ]
    return {
        "x_t": normal(generator, batch, hidden),
        "t": torch.randint(0, sizes["steps"], (batch,), generator=generator),
        "lambda": lam,
        "noise": normal(generator, batch, hidden),
        "chain": chain,
    }


def _reference_x0(reference, seq, x_t, t, lam):
    with InjectedDraws([lam.clone()]) as draws:
        item_rep = reference.LayerNorm(
            reference.embed_dropout(reference.item_embeddings(seq))
        )
        x0, _ = reference.diffu.xstart_model(
            item_rep, x_t, reference.diffu._scale_timesteps(t), (seq > 0).float()
        )
    draws.assert_consumed()
    return x0


def _ours_x0(ours, seq, seq_len, x_t, t, lam):
    with InjectedDraws([lam.clone()]) as draws:
        history, mask, last = ours.encode_history(seq, seq_len)
        x0 = ours.approximate(history, mask, last, x_t, t)
    draws.assert_consumed()
    return x0


def _loss_chain_scores(ours, reference, seq, target, d, label, note):
    """Training loss, chain x0_hat and scores of both, on the same draws."""
    seq_len = torch.full((seq.shape[0],), seq.shape[1])
    data = interaction(seq, seq_len, target)
    with InjectedDraws(
        [d["noise"].clone(), d["lambda"].clone()], [d["t"].clone()]
    ) as draws:
        ours_loss = ours.calculate_loss(data)
    draws.assert_consumed()
    with (
        _steps(reference, d["t"]),
        InjectedDraws([d["noise"].clone(), d["lambda"].clone()]) as draws,
    ):
        _, rep, *_ = reference(seq, target.unsqueeze(1), train_flag=True)
        theirs_loss = reference.loss_diffu_ce(rep, target.unsqueeze(1))
    draws.assert_consumed()

    chain = d["chain"]
    with InjectedDraws([c.clone() for c in chain]) as draws:
        ours_x0 = ours.forward(seq, seq_len)
    draws.assert_consumed()
    with InjectedDraws([c.clone() for c in chain]) as draws:
        ours_scores = ours.full_sort_predict(data)
    draws.assert_consumed()
    with InjectedDraws([c.clone() for c in chain]) as draws:
        _, theirs_x0, *_ = reference(seq, target.unsqueeze(1), train_flag=False)
        theirs_scores = reference.diffu_rep_pre(theirs_x0)
    draws.assert_consumed()
    steps = len(chain) // 2
    return [
        comparison(
            f"{label}training loss (CE of x0_hat . E^T)", ours_loss, theirs_loss, note
        ),
        comparison(
            f"{label}x0_hat after the {steps}-step reverse chain",
            ours_x0,
            theirs_x0,
            note,
        ),
        comparison(f"{label}scores over all items", ours_scores, theirs_scores, note),
    ]


def check_diffurec(reference_dir, sizes, generator):
    """DiffuRec: approximator, loss, chain and scores; nothing switched."""
    ours, reference = _pair("DiffuRec", reference_dir, sizes)
    seq, target = histories(
        generator, sizes["batch"], sizes["length"], sizes["n_items"]
    )
    seq_len = torch.full((sizes["batch"],), sizes["length"])
    d = _draws(generator, sizes)
    with torch.no_grad():
        results = [
            comparison(
                "x0_hat of one approximator call",
                _ours_x0(ours, seq, seq_len, d["x_t"], d["t"], d["lambda"]),
                _reference_x0(reference, seq, d["x_t"], d["t"], d["lambda"]),
                _NO_PADDING,
            )
        ]
        results += _loss_chain_scores(ours, reference, seq, target, d, "", _NO_PADDING)
    return results


def _reference_block(block, hidden, mask):
    """The reference block's self-attention and feed-forward sublayers only."""
    hidden = block.input_sublayer(
        hidden, lambda h: block.MU.forward(h, h, h, mask=mask)
    )
    return block.output_sublayer(hidden, block.feed_forward)


@contextlib.contextmanager
def _our_approximator(reference, ours, seq, seq_len):
    """The reference's approximator replaced by ours, for the block."""
    history, mask, last = ours.encode_history(seq, seq_len)
    steps = ours.diffusion_steps

    def approximate(rep_item, x_t, scaled_t, mask_seq):
        t = torch.round(scaled_t * steps / 1000.0).long()  # its rescaled steps back
        return ours.approximate(history, mask, last, x_t, t), None

    xstart = reference.diffu.xstart_model
    xstart.forward = approximate
    try:
        yield
    finally:
        del xstart.forward


def check_diffurecsys(reference_dir, sizes, generator):
    """DiffuRecSys: shared block, then its diffusion around our approximator."""
    # offset noise switched off: the reference at this commit has it off
    ours, reference = _pair("DiffuRecSys", reference_dir, sizes, offset_noise=0.0)
    batch, length, hidden = sizes["batch"], sizes["length"], sizes["hidden_size"]
    seq, target = histories(generator, batch, length, sizes["n_items"])
    seq_len = torch.full((batch,), length)
    block_input = normal(generator, batch, length, hidden)
    d = _draws(generator, sizes)
    results = []
    with torch.no_grad():
        keys_padded = torch.zeros(batch, length, dtype=torch.bool)
        ours_block = ours.blocks[0](block_input, keys_padded)
        theirs_block = _reference_block(
            reference.diffu.xstart_model.att.transformer_blocks[0],
            block_input,
            torch.ones(batch, length),
        )
        results.append(
            comparison(
                "self-attention block (attention + feed-forward sublayers)",
                ours_block,
                theirs_block,
                "block 0 on a random [B L H] input without padding; the reference "
                "block's cross-attention sublayer left out (a documented deviation)",
            )
        )
        results.append(
            comparison(
                "x0_hat of one approximator call",
                _ours_x0(ours, seq, seq_len, d["x_t"], d["t"], d["lambda"]),
                _reference_x0(reference, seq, d["x_t"], d["t"], d["lambda"]),
                "not expected to agree: the cross-attention is a documented "
                "deviation with no switch (softmax attention over positions vs "
                "the reference's linear attention with its key softmax over the "
                "head axis; the reference's block loop uses only the last block)",
                expected_equal=False,
            )
        )
        with _our_approximator(reference, ours, seq, seq_len):
            results += _loss_chain_scores(
                ours,
                reference,
                seq,
                target,
                d,
                "diffusion around our approximator: ",
                "the reference's approximator replaced by ours on the instance, so "
                "this compares its diffusion code (schedule, q_sample, reverse "
                "chain, CE loss, scoring, draw order); offset_noise=0 for ours "
                "(off in the reference at this commit); " + _NO_PADDING,
            )
    return results
