"""Our models built without data: the property file, small sizes, no dataset.

The equivalence checks need only a model of a given item count, so they
build it the way RecBole would (``props/<Model>.yaml`` plus overrides) from a
stand-in dataset that reports the item count.
"""

import os

import torch
import yaml
from recbole.data.interaction import Interaction

from recbole_diffusion.config import props_dir

__all__ = ["FIELDS", "ItemCount", "build_model", "interaction", "model_config"]

# RecBole's field names, as its Config would set them.
FIELDS = {
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "LIST_SUFFIX": "_list",
    "ITEM_LIST_LENGTH_FIELD": "item_length",
    "NEG_PREFIX": "neg_",
}


class ItemCount:
    """What a SequentialRecommender reads from its dataset: the item count."""

    def __init__(self, n_items):
        self.n_items = n_items

    def num(self, field):
        return self.n_items


def model_config(model, **overrides):
    """``props/<model>.yaml`` with RecBole's field names, as a plain dict."""
    with open(os.path.join(props_dir(), f"{model}.yaml"), encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    config.update(FIELDS, device="cpu")
    config.update(overrides)
    return config


def build_model(model, n_items, **overrides):
    """Our ``model`` (a class of ``recbole_diffusion.model``) for ``n_items`` ids (0 = padding)."""
    from recbole_diffusion import registry

    model_class = registry.get_model(model)
    return model_class(model_config(model, **overrides), ItemCount(n_items))


def interaction(item_seq, item_seq_len, target=None, **extra):
    """A RecBole batch of histories ``item_seq`` [B L] (right-padded)."""
    fields = {"item_id_list": item_seq, "item_length": item_seq_len}
    if target is not None:
        fields["item_id"] = target
    fields.update(extra)
    return Interaction({key: torch.as_tensor(value) for key, value in fields.items()})
