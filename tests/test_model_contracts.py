"""What every plugin model must do, checked on each: evaluation and history.

- Evaluation runs without dropout: in eval mode a model built with every
  dropout probability at 0.5 scores exactly like the same weights with every
  dropout at 0, under the same seed (the diffusion models draw their own
  noise at inference, which the seed fixes). Dropout left on would both change
  the values and consume random numbers.
- The whole history counts: changing the first item of a longer history
  changes that user's scores, and leaves the other users' scores alone.
"""

import pytest
import torch
from conftest import UNIT_N_ITEMS, UnitDataset, unit_config
from recbole.data.interaction import Interaction

from recbole_diffusion.model.adrec import ADRec
from recbole_diffusion.model.cddrec import CDDRec
from recbole_diffusion.model.diffurec import DiffuRec
from recbole_diffusion.model.diffurecsys import DiffuRecSys
from recbole_diffusion.model.duorec import DuoRec
from recbole_diffusion.model.sasrecplus import SASRecPlus

WIDTH = 6
SEQUENCES = [[3, 4, 5], [7, 1, 2, 9, 11], [12, 13], [2, 4, 6, 8, 10, 12]]

# model name -> (class, property file, its dropout keys)
MODELS = {
    "DiffuRec": (
        DiffuRec,
        "DiffuRec",
        ("hidden_dropout_prob", "attn_dropout_prob", "emb_dropout_prob"),
    ),
    "DiffuRecSys": (
        DiffuRecSys,
        "DiffuRecSys",
        ("hidden_dropout_prob", "attn_dropout_prob", "emb_dropout_prob"),
    ),
    "CDDRec": (
        CDDRec,
        "CDDRec",
        ("hidden_dropout_prob", "attn_dropout_prob", "decoder_dropout_prob"),
    ),
    "ADRec": (
        ADRec,
        "ADRec",
        ("hidden_dropout_prob", "attn_dropout_prob", "emb_dropout_prob"),
    ),
    "DuoRec": (DuoRec, "DuoRec", ("hidden_dropout_prob", "attn_dropout_prob")),
    "SASRec+": (SASRecPlus, "SASRecPlus", ("hidden_dropout_prob", "attn_dropout_prob")),
}


def make_batch(sequences=SEQUENCES):
    rows = [list(s) + [0] * (WIDTH - len(s)) for s in sequences]
    return Interaction(
        {
            "item_id_list": torch.tensor(rows),
            "item_length": torch.tensor([len(s) for s in sequences]),
            "item_id": torch.tensor([s[-1] % 20 + 1 for s in sequences]),
        }
    )


class TrainingRows(UnitDataset):
    """The item count, and training rows for DuoRec's same-target index."""

    inter_feat = make_batch()


def make_model(name, dropout, seed=0, **settings_overrides):
    model_class, props, dropout_keys = MODELS[name]
    settings = {
        "hidden_size": 16,
        "inner_size": 32,
        "n_heads": 2,
        "n_layers": 1,
        "diffusion_steps": 4,
        "MAX_ITEM_LIST_LENGTH": WIDTH,
    }
    settings.update({key: dropout for key in dropout_keys})
    settings.update(settings_overrides)
    torch.manual_seed(seed)
    return model_class(unit_config(props, **settings), TrainingRows())


def scores_under_seed(model, batch, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.full_sort_predict(batch)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dropout_is_off_at_evaluation(name):
    """Catches: a dropout that ignores ``self.training`` anywhere in the model."""
    with_dropout = make_model(name, dropout=0.5)
    without = make_model(name, dropout=0.0)
    without.load_state_dict(with_dropout.state_dict())
    batch = make_batch()
    with_dropout.eval(), without.eval()
    scores = scores_under_seed(with_dropout, batch)
    assert scores.shape == (len(SEQUENCES), UNIT_N_ITEMS)
    torch.testing.assert_close(
        scores, scores_under_seed(without, batch), rtol=0, atol=1e-6
    )
    # the dropout keys are the model's: in training mode they do act
    with_dropout.train(), without.train()
    assert not torch.allclose(
        scores_under_seed(with_dropout, batch), scores_under_seed(without, batch)
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_an_earlier_item_of_the_history_changes_the_scores(name):
    """Catches: a model that reads the last item alone (history hidden)."""
    model = make_model(name, dropout=0.0).eval()
    with torch.no_grad():  # unit-scale weights, so that every input visibly counts
        model.item_embedding.weight.normal_()
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_normal_(module.weight)
    batch = make_batch()
    changed_sequences = [list(s) for s in SEQUENCES]
    changed_sequences[1][0] = 17  # the first of five items; the last stays 11
    scores = scores_under_seed(model, batch)
    changed = scores_under_seed(model, make_batch(changed_sequences))
    assert (changed[1] - scores[1]).abs().max() > 0.01 * scores[1].abs().max()
    others = [0, 2, 3]
    torch.testing.assert_close(changed[others], scores[others], rtol=0, atol=1e-5)
