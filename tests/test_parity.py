"""The equivalence half of ``benchmarks/parity``, without any reference checkout.

A test that needs a checkout runs only when ``PARITY_REFERENCE_ROOT`` names a
folder holding ``<Model>/`` checkouts (e.g. ``/tmp/refs``), and is skipped
otherwise.
"""

import os
import re
from pathlib import Path

import pytest
import torch

from benchmarks.parity.build import build_model, interaction
from benchmarks.parity.draws import DrawMismatch, InjectedDraws
from benchmarks.parity.mapping import (
    MAPS,
    REFERENCE_UNUSED,
    UNMAPPED,
    copy_weights,
    map_names,
    unused_reference_names,
)
from benchmarks.parity.reference import REFERENCES
from benchmarks.parity.render import latest_runs, render

torch.set_num_threads(1)

TINY = {
    "DiffuRec": {"hidden_size": 8, "n_heads": 2, "n_layers": 2, "diffusion_steps": 4},
    "DiffuRecSys": {
        "hidden_size": 8,
        "n_heads": 2,
        "n_layers": 2,
        "diffusion_steps": 4,
    },
    "CDDRec": {
        "hidden_size": 8,
        "n_heads": 2,
        "n_layers": 2,
        "inner_size": 32,
        "diffusion_steps": 4,
    },
    "ADRec": {"hidden_size": 8, "n_heads": 2, "inner_size": 32, "diffusion_steps": 4},
}


def _ours(model):
    return build_model(model, 12, MAX_ITEM_LIST_LENGTH=5, **TINY[model]).eval()


class _FakeReference:
    """A reference "module" whose state dict holds exactly the mapped names."""

    def __init__(self, model, ours):
        self.state = {}
        for our_key, (name, chunk) in map_names(model, ours.state_dict()).items():
            shape = list(ours.state_dict()[our_key].shape)
            if chunk is not None:
                shape[0] *= chunk[1]
            self.state.setdefault(name, torch.full(shape, float("nan")))

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.state = dict(state)


@pytest.mark.parametrize("model", sorted(MAPS))
def test_mapping_covers_every_parameter(model):
    """Catches a parameter of ours added or renamed without a mapping rule (it
    would keep the reference's random value and the check would fail far from
    the cause), two of ours mapped onto one reference tensor, and a stale
    UNMAPPED excuse that no longer matches any parameter."""
    keys = list(_ours(model).state_dict())
    mapping = map_names(model, keys)
    excused = [k for k in keys if k not in mapping]
    assert all(any(k.startswith(p) for p in UNMAPPED[model]) for k in excused)
    for prefix in UNMAPPED[model]:
        assert any(k.startswith(prefix) for k in keys), f"stale excuse {prefix}"
    assert len(set(mapping.values())) == len(mapping)


@pytest.mark.parametrize("model", sorted(MAPS))
def test_copy_weights_fills_every_slice(model):
    """Catches a copy that misses a mapped tensor or writes a fused tensor's
    thirds in the wrong place (CDDRec's q/k/v in one in_proj): the fake
    reference starts all-NaN and must end holding our values exactly."""
    ours = _ours(model)
    fake = _FakeReference(model, ours)
    mapping = copy_weights(model, ours, fake)
    state = ours.state_dict()
    for name, value in fake.state.items():
        assert not torch.isnan(value).any(), f"{name} left unfilled"
    for our_key, (name, chunk) in mapping.items():
        target = fake.state[name]
        if chunk is not None:
            size = target.shape[0] // chunk[1]
            target = target[chunk[0] * size : (chunk[0] + 1) * size]
        assert torch.equal(target, state[our_key])


def test_unfilled_reference_parameter_is_refused():
    """Catches a reference parameter that none of ours fills and nobody
    excused: it would silently keep the reference's random initial value."""
    ours = _ours("DiffuRec")
    mapping = map_names("DiffuRec", ours.state_dict())
    names = [name for name, _ in mapping.values()]
    assert unused_reference_names(
        "DiffuRec", mapping, names + ["position_embeddings.weight"]
    )
    with pytest.raises(KeyError, match="unfilled"):
        unused_reference_names("DiffuRec", mapping, names + ["diffu.mystery.weight"])
    assert set(REFERENCE_UNUSED) == set(MAPS) == set(REFERENCES)


def test_injected_draws_are_checked_and_restored():
    """Catches a side that draws more, fewer or differently shaped random
    numbers than prepared (the two sides would then silently use different
    noise), and torch's samplers left patched after the block."""
    saved = torch.randn
    with InjectedDraws([torch.ones(2, 3)]), pytest.raises(DrawMismatch, match="shape"):
        torch.randn(3, 2)
    assert torch.randn is saved
    with InjectedDraws([torch.ones(2, 3)]) as draws:
        assert torch.equal(torch.randn(2, 3), torch.ones(2, 3))
        with pytest.raises(DrawMismatch, match="extra"):
            torch.randn_like(torch.zeros(2, 3))
    draws.assert_consumed()
    with InjectedDraws([torch.ones(2)], [torch.tensor([1, 2])]) as draws:
        pass
    with pytest.raises(DrawMismatch, match="not consumed"):
        draws.assert_consumed()
    with InjectedDraws([torch.zeros(4)]):
        out = torch.normal(torch.full((4,), 2.0), torch.full((4,), 3.0))
    assert torch.equal(out, torch.full((4,), 2.0))  # mean + std * 0


def test_diffurec_loss_consumes_exactly_its_draws():
    """Catches a change in how many random numbers DiffuRec's training step
    draws (one step per row, one noise, one lambda): the equivalence check
    injects exactly these, in this order, into both implementations."""
    ours = _ours("DiffuRec")
    seq = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    data = interaction(seq, torch.tensor([5, 5]), torch.tensor([3, 4]))
    normals = [torch.randn(2, 8), torch.randn(2, 5, 8)]
    with torch.no_grad(), InjectedDraws(normals, [torch.tensor([0, 3])]) as draws:
        ours.calculate_loss(data)
    draws.assert_consumed()


def _record(model, quantity, diff, date="2026-01-02T00:00:00+00:00", expected=True):
    return {
        "model": model,
        "kind": "equivalence",
        "side": "ours",
        "quantity": quantity,
        "max_abs_diff": diff,
        "reference_repo": REFERENCES[model].repository,
        "reference_commit": REFERENCES[model].commit,
        "commit_verified": True,
        "note": "a | note",
        "expected_equal": expected,
        "torch": "2.0",
        "date": date,
    }


def test_render_page_from_fixed_records():
    """Catches a page that shows an older run instead of the latest, hides a
    miss, drops the reference commit or checkout command, or forgets to say
    that training parity (and equivalence of a model without records) is not
    measured."""
    records = [
        _record("DiffuRec", "old quantity", 1.0, date="2026-01-01T00:00:00+00:00"),
        _record("DiffuRec", "scores over all items", 3e-6),
        _record("DiffuRec", "training loss", 2e-3),
        _record("DiffuRecSys", "x0_hat", 2.5, expected=False),
    ]
    assert [r["quantity"] for r in latest_runs(records)["DiffuRec"]] == [
        "scores over all items",
        "training loss",
    ]
    page = render(records)
    assert "old quantity" not in page
    assert re.search(r"\| scores over all items \| 3\.00e-06 \| within \|", page)
    assert re.search(r"\| training loss \| 2\.00e-03 \| \*\*MISSED\*\* \|", page)
    assert "not expected (deviation)" in page
    assert "a \\| note" in page  # a pipe in a note does not break the table
    for model, reference in REFERENCES.items():
        assert reference.commit in page
        assert f"git -C /tmp/refs/{model} checkout {reference.commit}" in page
    assert page.count("Training parity (`python -m benchmarks.parity.training") == len(
        REFERENCES
    )
    assert page.count("): not yet measured.") == len(REFERENCES)  # no training records
    assert "Equivalence: not yet measured." in page  # CDDRec, ADRec have no records


@pytest.mark.skipif(
    not os.environ.get("PARITY_REFERENCE_ROOT"),
    reason="needs PARITY_REFERENCE_ROOT=<folder of reference checkouts>",
)
def test_diffurec_equivalence_against_checkout():
    """Catches DiffuRec drifting from its reference code (needs a checkout)."""
    from benchmarks.parity.equivalence import run_equivalence

    directory = Path(os.environ["PARITY_REFERENCE_ROOT"]) / "DiffuRec"
    if not directory.is_dir():
        pytest.skip(f"no checkout at {directory}")
    records = run_equivalence("DiffuRec", directory)
    assert all(r["within_target"] for r in records)
