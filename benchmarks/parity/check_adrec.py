"""Equivalence check of ADRec against its reference code.

Compared: the CAM's guidance states, the ADM's x0_hat on a training batch
(per-token steps and noise injected), the CE and MSE terms of the loss, the
x0_hat of the last token after the reverse chain (our cached and uncached
paths) and the scores over all items.

The reference's feed-forward uses the tanh approximation of GELU; ours uses
``hidden_act: gelu`` by default, torch's exact (erf) GELU (``hidden_act:
gelu_tanh`` selects the tanh form). The check therefore runs twice: our model
as built by default, and our model with its GELU modules swapped for the tanh
form (nothing else changed, the same as ``gelu_tanh``), so that the records
show what the activation alone accounts for.
"""

import argparse
import contextlib

import torch
from torch import nn

from benchmarks.parity.build import build_model, interaction
from benchmarks.parity.compare import comparison, histories, normal
from benchmarks.parity.draws import InjectedDraws
from benchmarks.parity.mapping import copy_weights
from benchmarks.parity.reference import import_reference

__all__ = ["check_adrec", "tanh_gelu"]

_NO_PADDING = (
    "full-length histories (no padding): the query-mask and padding-step "
    "differences cannot act"
)


def _args(sizes):
    return argparse.Namespace(
        model="adrec",
        dataset="parity",
        hidden_size=sizes["hidden_size"],
        item_num=sizes["n_items"] - 1,  # the reference adds the padding row itself
        emb_dropout=0.3,
        dropout=0.1,
        pretrained=False,
        freeze_emb=False,
        geodesic=False,
        schedule_sampler_name="uniform",
        diffusion_steps=sizes["steps"],
        noise_schedule="trunc_lin",
        rescale_timesteps=True,
        dif_decoder="att",
        lambda_uncertainty=0.001,
        independent=True,
        cfg_scale=1,
        is_causal=True,
        device="cpu",
    )


def tanh_gelu(model):
    """Swap every exact ``nn.GELU`` of ``model`` for the tanh form, in place.

    Returns how many were swapped.
    """
    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.GELU) and child.approximate == "none":
                setattr(module, name, nn.GELU(approximate="tanh"))
                swapped += 1
    return swapped


@contextlib.contextmanager
def _steps(reference, t):
    sampler = reference.diffu.schedule_sampler
    sampler.sample = lambda size, device: (t.reshape(-1).clone(), torch.ones(size))
    try:
        yield
    finally:
        del sampler.sample


def _one_run(ours, reference, sizes, generator, label, note):
    batch, length, hidden = sizes["batch"], sizes["length"], sizes["hidden_size"]
    seq, target = histories(generator, batch, length, sizes["n_items"])
    seq_len = torch.full((batch,), length)
    tag = torch.cat([seq[:, 1:], target.unsqueeze(1)], dim=1)  # next item everywhere
    data = interaction(seq, seq_len, target)
    t = torch.randint(0, sizes["steps"], (batch, length), generator=generator)
    noise = normal(generator, batch, length, hidden)
    # reverse chain: x_T then one noise per step; the reference draws [B L H]
    # tensors of which only the last position is used
    ours_chain = [normal(generator, batch, hidden) for _ in range(sizes["steps"] + 1)]
    theirs_chain = []
    for draw in ours_chain:
        full = normal(generator, batch, length, hidden)
        full[:, -1] = draw
        theirs_chain.append(full)

    results = []
    with torch.no_grad():
        # guidance of the CAM
        ours_c = ours.condition(seq)
        mask_seq = (seq > 0).float()
        history = reference.hist_norm(
            reference.embed_dropout(reference.item_embedding(seq))
        )
        theirs_c = reference.diffu.ag_encoder(history, mask_seq)
        results.append(comparison(f"{label}CAM guidance c", ours_c, theirs_c, note))

        # training batch: x0_hat of every token, CE and MSE
        x_t = ours.diffusion.q_sample(ours.item_embedding(tag), t, noise.clone())
        ours_x0 = ours.denoise(ours_c, x_t, t)
        with InjectedDraws([noise.clone()], [t.clone()]) as draws:
            ours_ce, ours_mse = ours.calculate_loss(data)
        draws.assert_consumed()
        with (
            _steps(reference, t),
            InjectedDraws([noise.reshape(-1, hidden).clone()]) as draws,
        ):
            theirs_x0, _, theirs_mse = reference(seq, tag, train_flag=True)
            theirs_ce = reference.calculate_loss(theirs_x0, tag)
        draws.assert_consumed()
        results += [
            comparison(
                f"{label}x0_hat of every token (training batch)",
                ours_x0,
                theirs_x0,
                note,
            ),
            comparison(
                f"{label}training loss: CE term",
                ours_ce / ours.ce_weight,
                theirs_ce,
                note,
            ),
            comparison(
                f"{label}training loss: MSE term",
                ours_mse / ours.mse_weight,
                theirs_mse,
                note,
            ),
        ]

        # reverse chain of the last token and scores
        outputs = {}
        for cached in (True, False):
            ours.inference_cache = cached
            with InjectedDraws([c.clone() for c in ours_chain]) as draws:
                outputs[cached] = ours.forward(seq, seq_len)
            draws.assert_consumed()
        ours.inference_cache = True
        with InjectedDraws([c.clone() for c in ours_chain]) as draws:
            ours_scores = ours.full_sort_predict(data)
        draws.assert_consumed()
        with InjectedDraws([c.clone() for c in theirs_chain]) as draws:
            _, theirs_last, _ = reference(seq, tag, train_flag=False)
            theirs_scores = reference.calculate_score(theirs_last)
        draws.assert_consumed()
        steps = sizes["steps"]
        results += [
            comparison(
                f"{label}x0_hat of the last token after the {steps}-step reverse chain (cached)",
                outputs[True],
                theirs_last,
                note,
            ),
            comparison(
                f"{label}x0_hat of the last token after the {steps}-step reverse chain "
                "(inference_cache: False)",
                outputs[False],
                theirs_last,
                note,
            ),
            comparison(
                f"{label}scores over all items", ours_scores, theirs_scores, note
            ),
        ]
    return results


def check_adrec(reference_dir, sizes, generator):
    """ADRec as built, then with the tanh GELU swapped into ours."""
    modules = import_reference("ADRec", reference_dir, ["model"])
    ours = build_model(
        "ADRec",
        sizes["n_items"],
        hidden_size=sizes["hidden_size"],
        n_heads=4,  # the reference's blocks have 4 heads
        inner_size=4 * sizes["hidden_size"],  # and a feed-forward of width 4H
        cam_layers=2,  # and 2 blocks in each module
        adm_layers=2,
        diffusion_steps=sizes["steps"],
        MAX_ITEM_LIST_LENGTH=sizes["length"],
        # unit-scale embeddings: with N(0, 0.02) every quantity is tiny and a
        # difference would read small whatever it is
        embedding_init_std=1.0,
    ).eval()
    reference = modules["model"].Att_Diffuse_model(_args(sizes)).eval()
    copy_weights("ADRec", ours, reference)
    state = generator.get_state()
    results = _one_run(
        ours,
        reference,
        sizes,
        generator,
        "",
        "our model as built (exact erf GELU; the reference uses the tanh form); "
        "embedding_init_std=1 for the check; " + _NO_PADDING,
    )
    generator.set_state(state)  # the same inputs and draws again
    swapped = tanh_gelu(ours)
    results += _one_run(
        ours,
        reference,
        sizes,
        generator,
        "tanh GELU in ours: ",
        f"diagnostic: our {swapped} GELU modules swapped for the tanh form at run "
        "time, everything else as built; " + _NO_PADDING,
    )
    return results
