"""Equivalence check of CDDRec against its reference code.

The two decoders are not the same function (a documented deviation without a
switch: the reference calls a stock ``nn.TransformerDecoderLayer(c, e_t)``
with ``batch_first`` off on [B L H] tensors, so its attention runs over the
batch axis). What is compared:

- the SASRec encoder's states ``c`` (full-length histories);
- the decoder's output on inputs where both agree: one user at a time (a
  batch of one, so the reference's attention over the batch axis sees only
  that user) at position 0 (where ours attends to ``c_0`` alone), with the
  output projection of the reference's attention to the step embedding set
  to zero (ours has no such sublayer). There each side computes
  ``LN(h + FFN(h))`` with ``h = LN(c_0 + W_o W_v c_0)``; the reference adds
  its ``norm2`` to an already normalised vector and uses LayerNorm epsilon
  1e-5 (ours 1e-12);
- the stepwise diffuser: the corrupted positive ``q_sample(E[target], i)``
  and the generated preference ``x_hat_i = mu + sqrt(v_i) z`` for the same
  ``mu`` and ``z`` at every step ``i >= 1`` (at ``i = 0`` ours uses the
  posterior variance 0, the reference step 1's: a documented deviation).

The training loss and the scores are not compared: both are computed from
the decoder's output at every position and step, where the two decoders
differ, and the losses differ by documented deviations too (the reference's
extra augmented-view term, its negatives, its pairing of views).
"""

import argparse

import torch

from benchmarks.parity.build import build_model
from benchmarks.parity.compare import comparison, histories, normal
from benchmarks.parity.draws import InjectedDraws
from benchmarks.parity.mapping import copy_weights
from benchmarks.parity.reference import import_reference

__all__ = ["check_cddrec"]

_BETA_START, _BETA_END = 1e-4, 0.002


def _args(sizes):
    return argparse.Namespace(
        T=sizes["steps"],
        beta_1=_BETA_START,
        beta_T=_BETA_END,
        hidden_size=sizes["hidden_size"],
        item_size=sizes["n_items"],
        max_seq_length=sizes["length"],
        num_attention_heads=sizes["n_heads"],
        num_hidden_layers=sizes["n_layers"],
        attention_probs_dropout_prob=0.2,
        hidden_dropout_prob=0.0,
        hidden_act="gelu",
        initializer_range=0.02,
        linear_infonce=False,
        temperature=0.5,
        cuda_condition=False,
    )


def check_cddrec(reference_dir, sizes, generator):
    """CDDRec: encoder states, decoder at position 0, the stepwise diffuser."""
    modules = import_reference("CDDRec", reference_dir, ["models"])
    hidden, steps = sizes["hidden_size"], sizes["steps"]
    ours = build_model(
        "CDDRec",
        sizes["n_items"],
        hidden_size=hidden,
        n_heads=sizes["n_heads"],
        n_layers=sizes["n_layers"],
        inner_size=4 * hidden,  # the reference's encoder feed-forward is 4H wide
        diffusion_steps=steps,
        noise_schedule="linear",
        beta_start=_BETA_START,
        beta_end=_BETA_END,
        MAX_ITEM_LIST_LENGTH=sizes["length"],
    ).eval()
    reference = modules["models"].CDDRecModel(_args(sizes)).eval()
    copy_weights("CDDRec", ours, reference)
    with torch.no_grad():
        cross = reference.decoder.multihead_attn.out_proj
        cross.weight.zero_()
        cross.bias.zero_()

    batch, length = sizes["batch"], sizes["length"]
    seq, target = histories(generator, batch, length, sizes["n_items"])
    x0 = ours.item_embedding(
        torch.randint(1, sizes["n_items"], (batch, length), generator=generator)
    )
    noise = normal(generator, steps, batch, length, hidden)
    mu = normal(generator, steps, batch, length, hidden)
    z = normal(generator, steps, batch, length, hidden)
    results = []
    with torch.no_grad():
        ours_c = ours.encode(seq)
        input_emb, mask = reference.add_position_embedding(seq)
        theirs_c = reference.conditional_encoder(input_emb, mask, True)[-1]
        results.append(
            comparison(
                "encoder states c",
                ours_c,
                theirs_c,
                "full-length histories (no padding); init N(0, 0.02) as in both codes",
            )
        )

        t = torch.zeros(batch, dtype=torch.long)
        rows = torch.arange(batch)
        ours_dec = ours.decoder.decode_tokens(ours_c, seq != 0, t[:1], rows, t)[0]
        time_emb = reference.time_embeddings(torch.zeros(1, length, dtype=torch.long))
        theirs_dec = torch.cat(
            [
                reference.decoder(theirs_c[b : b + 1], time_emb)[:, 0]
                for b in range(batch)
            ]
        )
        results.append(
            comparison(
                "decoder output mu_theta(c, 0) at position 0",
                ours_dec,
                theirs_dec,
                "inputs on which both agree: the reference decoder run per user "
                "(batch of one), position 0, its attention to the step embedding "
                "zeroed (ours has none); LayerNorm eps 1e-5 there, 1e-12 here",
            )
        )

        ours_pos, theirs_pos, ours_hat, theirs_hat = [], [], [], []
        for i in range(steps):
            step = torch.full((batch,), i, dtype=torch.long)
            ours_pos.append(ours.diffusion.q_sample(x0, step, noise[i]))
            theirs_pos.append(reference.q_sample(x0, step, noise[i]))
            if i == 0:
                continue
            std = ours.diffusion.posterior_variance[i].sqrt()
            ours_hat.append(mu[i] + std * z[i])
            with InjectedDraws([z[i].clone()]) as draws:
                theirs_hat.append(reference.p_sample(mu[i], mu[i], step)["sample"])
            draws.assert_consumed()
        results += [
            comparison(
                f"diffuser: corrupted positives q_sample(E[target], i), i = 0..{steps - 1}",
                torch.stack(ours_pos),
                torch.stack(theirs_pos),
                "the same embeddings and noise on both sides",
            ),
            comparison(
                f"diffuser: x_hat_i = mu + sqrt(v_i) z, i = 1..{steps - 1}",
                torch.stack(ours_hat),
                torch.stack(theirs_hat),
                "the same mu and z on both sides; i = 0 left out (ours v_0 = 0, "
                "the reference step 1's variance: a documented deviation)",
            ),
        ]
    return results
