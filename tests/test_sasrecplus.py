"""SASRec+: RecBole's SASRec trained with CE over all items at every position."""

import pytest
import torch
from recbole.model.sequential_recommender.sasrec import SASRec

from recbole_diffusion.config import build_config
from recbole_diffusion.data import TARGET_LIST_PREFIX
from recbole_diffusion.model.sasrecplus import SASRecPlus
from recbole_diffusion.quick_start import build_pipeline, load_data_and_model
from recbole_diffusion.registry import get_trainer
from recbole_diffusion.utils import ConfigError

TARGETS = TARGET_LIST_PREFIX + "item_id_list"


def _small(data_path, tmp_path, **overrides):
    settings = {
        "data_path": data_path,
        "checkpoint_dir": str(tmp_path / "saved"),
        "hidden_size": 16,
        "inner_size": 32,
        "n_heads": 2,
        "MAX_ITEM_LIST_LENGTH": 10,
        "train_batch_size": 16,
        "eval_batch_size": 64,
        "epochs": 1,
        "show_progress": False,
        "worker": 0,
        "seed": 2020,
        "reproducibility": True,
        "log_wandb": False,
        "state": "ERROR",
    }
    settings.update(overrides)
    return settings


def test_name_resolves_to_the_model_with_the_papers_settings(tiny_data_path):
    """Catches: the alias not reaching the class, or its property file unread."""
    config = build_config("SASRec+", "tiny", config_dict={"data_path": tiny_data_path})
    assert config["model"] == "SASRecPlus"
    assert config["model_variant"] == "SASRec+"
    expected = {
        "n_layers": 2,
        "n_heads": 1,
        "hidden_size": 64,
        "hidden_dropout_prob": 0.1,
        "attn_dropout_prob": 0.1,
        "train_batch_size": 128,
        "loss_type": "CE",
        "train_windows": "all",
    }
    assert {key: config[key] for key in expected} == expected
    assert issubclass(SASRecPlus, SASRec)


def test_only_cross_entropy_is_accepted(tiny_data_path):
    config = build_config(
        "SASRec+",
        "tiny",
        config_dict={
            "data_path": tiny_data_path,
            "loss_type": "BPR",
            "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
        },
    )
    with pytest.raises(ConfigError, match="loss_type: CE"):
        SASRecPlus(config, _Items(10))


class _Items:
    def __init__(self, n_items):
        self.n_items = n_items

    def num(self, field):
        return self.n_items


@pytest.fixture
def small_pipeline(tiny_data_path, tmp_path):
    return build_pipeline(
        "SASRec+", "tiny", config_dict=_small(tiny_data_path, tmp_path)
    )


def test_training_batches_are_whole_sequences_with_a_target_per_position(
    small_pipeline,
):
    """Catches: SASRec+ trained on RecBole's one-target prefix rows."""
    _, dataset, train_data, valid_data, _, _ = small_pipeline
    batch = next(iter(train_data))
    assert TARGETS in batch
    lengths = batch["item_length"]
    # more than one target in a row: the data is not one target per row
    assert int((batch[TARGETS] > 0).sum()) == int(lengths.sum()) > len(lengths)
    assert TARGETS not in next(iter(valid_data))[0]


def test_loss_is_the_mean_ce_of_every_prefix_read_alone(small_pipeline):
    """Independent value: each position's CE from ``forward`` on its own prefix.

    Catches: targets shifted by one, padding positions counted, a sum in place
    of the mean, or a non-causal mask (then position n sees n + 1).
    """
    _, _, train_data, _, _, model = small_pipeline
    model.eval()  # no dropout: both paths are deterministic
    batch = next(iter(train_data))
    item_seq, lengths, targets = (
        batch["item_id_list"],
        batch["item_length"],
        batch[TARGETS],
    )
    losses = []
    with torch.no_grad():
        for row in range(len(item_seq)):
            for position in range(int(lengths[row])):
                prefix = torch.zeros_like(item_seq[row : row + 1])
                prefix[0, : position + 1] = item_seq[row, : position + 1]
                output = model(prefix, torch.tensor([position + 1]))
                logits = output @ model.item_embedding.weight.t()
                losses.append(
                    torch.nn.functional.cross_entropy(
                        logits, targets[row : row + 1, position]
                    )
                )
        expected = torch.stack(losses).mean()
        loss = model.calculate_loss(batch)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_history_before_the_last_item_changes_the_scores(small_pipeline):
    """Catches: a model that reads the last item only, or reads padding."""
    _, _, _, _, test_data, model = small_pipeline
    model.eval()
    interaction = next(iter(test_data))[0]
    item_seq, lengths = interaction["item_id_list"], interaction["item_length"]
    row = int(torch.argmax(lengths))
    assert int(lengths[row]) >= 3
    seq, length = item_seq[row : row + 1].clone(), lengths[row : row + 1]
    with torch.no_grad():
        base = model(seq, length)
        earlier = seq.clone()
        earlier[0, 0] = earlier[0, 0] % (model.n_items - 1) + 1
        assert not torch.allclose(model(earlier, length), base)
        if int(length) < seq.shape[1]:  # a padding position: must change nothing
            padded = seq.clone()
            padded[0, int(length)] = 1
            assert torch.equal(model(padded, length), base)


def test_predict_equals_full_sort_and_dropout_is_off_at_evaluation(small_pipeline):
    """Catches: predict and full_sort_predict reading different positions, and
    dropout left on in eval mode (two passes would then differ)."""
    _, _, _, _, test_data, model = small_pipeline
    interaction = next(iter(test_data))[0]
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        again = model.full_sort_predict(interaction)
        single = model.predict(interaction)
    assert torch.equal(scores, again)
    rows = torch.arange(len(scores))
    assert torch.allclose(single, scores[rows, interaction["item_id"]], atol=1e-5)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model.full_sort_predict(interaction), scores)


def test_gradients_reach_every_parameter(small_pipeline):
    _, _, train_data, _, _, model = small_pipeline
    model.train()
    model.calculate_loss(next(iter(train_data))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_learns_the_next_item_and_its_checkpoint_loads_back(recall_data_path, tmp_path):
    """Catches: a loss that does not train the scorer, a model that reads the
    last item alone, and a checkpoint that does not restore the trained model.

    The next item is an earlier item of the history, never the last one
    (``conftest.write_recall_dataset``): chance is HR@10 = 0.25. Measured at
    seed 2020: 0.24 before, 1.0 after 10 epochs.
    """
    config_dict = _small(
        recall_data_path,
        tmp_path,
        hidden_size=32,
        inner_size=64,
        learning_rate=0.005,
        epochs=10,
        eval_step=100,  # no validation during the run: the test set alone counts
    )
    config, _, train_data, valid_data, test_data, model = build_pipeline(
        "SASRec+", "recall", config_dict=config_dict
    )
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    before = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    after = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    assert before["hit@10"] < 0.4
    assert after["hit@10"] > 0.7
    assert after["ndcg@10"] > before["ndcg@10"] + 0.3

    _, loaded, _, _, _, loaded_test = load_data_and_model(trainer.saved_model_file)
    interaction = next(iter(test_data))[0]
    model.eval()
    with torch.no_grad():
        assert torch.equal(
            loaded.full_sort_predict(interaction), model.full_sort_predict(interaction)
        )
