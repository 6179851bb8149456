"""ADRec: whole-sequence data, per-token noise, cached inference, three stages."""

import logging
import math
import os
import re
import time
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import UNIT_N_ITEMS, UnitDataset, unit_config
from recbole.data.interaction import Interaction

from recbole_diffusion.config import build_config, props_dir
from recbole_diffusion.data import TARGET_LIST_PREFIX, WholeSequenceDataset
from recbole_diffusion.model.adrec import ADRec, CausalTransformer
from recbole_diffusion.quick_start import (
    build_pipeline,
    create_dataset,
    load_data_and_model,
    run_recbole_diffusion,
)
from recbole_diffusion.registry import get_trainer
from recbole_diffusion.trainer import ADRecTrainer, CheckpointError, load_checkpoint
from recbole_diffusion.utils import ConfigError

N_ITEMS = UNIT_N_ITEMS
HIDDEN = 16
TARGETS = TARGET_LIST_PREFIX + "item_id_list"


def make_config(**overrides):
    """The model's yaml defaults, shrunk to test size, as a plain dict."""
    return unit_config(
        "ADRec",
        **{
            "hidden_size": HIDDEN,
            "inner_size": 32,
            "n_heads": 2,
            "diffusion_steps": 8,
            "MAX_ITEM_LIST_LENGTH": 7,
            **overrides,
        },
    )


def make_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return ADRec(make_config(**overrides), UnitDataset())


def make_batch(sequences, width=7, fill=None, with_targets=True):
    """Right-padded training rows: each sequence's last item is the row's target.

    ``fill`` puts real items into the padding (and into the target list's
    padding) instead of zeros.
    """
    rows, targets, lengths, last = [], [], [], []
    for index, sequence in enumerate(sequences):
        inputs, nexts = sequence[:-1], sequence[1:]
        padding = width - len(inputs)
        pad = (
            [0] * padding
            if fill is None
            else [(fill + index + j) % 19 + 1 for j in range(padding)]
        )
        rows.append(inputs + pad)
        targets.append(nexts + pad)
        lengths.append(len(inputs))
        last.append(sequence[-1])
    fields = {
        "item_id_list": torch.tensor(rows),
        "item_length": torch.tensor(lengths),
        "item_id": torch.tensor(last),
    }
    if with_targets:
        fields[TARGETS] = torch.tensor(targets)
    return Interaction(fields)


SEQUENCES = [[3, 4, 5], [7, 1, 2, 9, 11, 6], [12, 13], [2, 4, 6, 8, 10]]


def under_seed(function, *args, seed=1):
    torch.manual_seed(seed)
    return function(*args)


def scores_under_seed(model, batch, seed=1, method="full_sort_predict"):
    with torch.no_grad():
        return under_seed(getattr(model, method), batch, seed=seed)


# --------------------------------------------------------------------------- #
# whole-sequence training data
# --------------------------------------------------------------------------- #
def _histories(data_path, dataset):
    """Each user's items in time order, read from the raw file, as internal ids."""
    rows = defaultdict(list)
    with open(os.path.join(data_path, "tiny", "tiny.inter")) as handle:
        next(handle)
        for line in handle:
            user, item, time = line.split()
            rows[user].append((float(time), item))
    histories = {}
    for user, events in rows.items():
        items = [item for _, item in sorted(events)]
        uid = int(dataset.token2id("user_id", user))
        histories[uid] = [int(i) for i in dataset.token2id("item_id", items)]
    return histories


def _built(tiny_config, **overrides):
    config = build_config("ADRec", "tiny", config_dict={**tiny_config, **overrides})
    dataset = create_dataset(config)
    return dataset, dataset.build()


def _real(row, length_field="item_length"):
    length = int(row[length_field])
    return row["item_id_list"][:length].tolist(), row[TARGETS][:length].tolist()


def test_one_training_row_per_user_targets_are_next_items(tiny_config):
    # L = 20 is longer than every history (at most 16): nothing is truncated
    dataset, (train, valid, test) = _built(tiny_config, MAX_ITEM_LIST_LENGTH=20)
    assert isinstance(dataset, WholeSequenceDataset)
    histories = _histories(tiny_config["data_path"], dataset)
    inter = train.inter_feat
    users = inter["user_id"].tolist()
    assert sorted(users) == sorted(histories)  # one row per user
    valid_items = dict(
        zip(valid.inter_feat["user_id"].tolist(), valid.inter_feat["item_id"].tolist())
    )
    test_items = dict(
        zip(test.inter_feat["user_id"].tolist(), test.inter_feat["item_id"].tolist())
    )
    for index, user in enumerate(users):
        row = inter[index]
        items, targets = _real(row)
        history = histories[user]
        # all training items precede the valid (-2) and test (-1) items
        assert items == history[:-3]
        assert targets == history[1:-2]
        assert row["item_id"].item() == history[-3] == targets[-1]
        assert row[TARGETS][len(items) :].eq(0).all()
        assert row["item_id_list"][len(items) :].eq(0).all()
        assert valid_items[user] == history[-2] and test_items[user] == history[-1]
    # valid and test rows are RecBole's, without a target list
    assert TARGETS not in valid.inter_feat and TARGETS not in test.inter_feat


@pytest.mark.parametrize("windows", ["last", "all"])
def test_train_windows_cover_long_histories(tiny_config, windows):
    length = 4
    dataset, (train, _, _) = _built(
        tiny_config, MAX_ITEM_LIST_LENGTH=length, train_windows=windows
    )
    histories = _histories(tiny_config["data_path"], dataset)
    covered = defaultdict(list)
    inter = train.inter_feat
    for index, user in enumerate(inter["user_id"].tolist()):
        items, targets = _real(inter[index])
        assert 1 <= len(items) <= length
        assert items[1:] == targets[:-1]  # the next item at every position
        covered[user].append(targets)
    for user, history in histories.items():
        training_targets = history[1:-2]  # no valid or test item
        windows_of_user = covered[user]
        if windows == "last":
            assert windows_of_user == [training_targets[-length:]]
        else:  # non-overlapping windows, in time order, cover every target
            assert sum(windows_of_user, []) == training_targets
            assert len(windows_of_user) == math.ceil(len(training_targets) / length)


def test_unknown_train_windows_is_refused(tiny_config):
    with pytest.raises(ConfigError, match="train_windows"):
        _built(tiny_config, train_windows="every")


def test_targets_are_derived_for_rows_without_a_target_list():
    model = make_model()
    with_list = make_batch(SEQUENCES)
    without = make_batch(SEQUENCES, with_targets=False)
    assert torch.equal(model.target_items(without), with_list[TARGETS])


# --------------------------------------------------------------------------- #
# configuration
# --------------------------------------------------------------------------- #
def test_yaml_defaults_are_the_papers():
    with open(os.path.join(props_dir(), "ADRec.yaml")) as handle:
        defaults = yaml.safe_load(handle)
    ADRec.validate_config(defaults)
    expected = {
        "hidden_size": 128,
        "MAX_ITEM_LIST_LENGTH": 50,
        "train_batch_size": 512,
        "learning_rate": 0.001,
        "weight_decay": 1e-5,
        "diffusion_steps": 32,
        "noise_schedule": "trunc_lin",
        "lambda_scale": 0.001,
        "warmup_epochs": 5,
        "cam_layers": 2,
        "adm_layers": 2,
        "n_heads": 4,
        "emb_dropout_prob": 0.3,
        "hidden_dropout_prob": 0.1,
        "ce_weight": 0.5,
        "mse_weight": 0.5,
        "lr_scheduler": "cosine",
        "inference_cache": True,
    }
    assert {key: defaults[key] for key in expected} == expected


@pytest.mark.parametrize(
    "key, value",
    [
        ("diffusion_steps", 0),
        ("diffusion_steps", -3),
        ("hidden_dropout_prob", -0.1),
        ("emb_dropout_prob", -0.3),
        ("attn_dropout_prob", 1.0),
        ("noise_schedule", "trunc_linear"),
        ("n_heads", 3),
        ("cam_layers", 0),
        ("inference_steps", 9),
        ("lambda_scale", -0.001),
        ("mse_weight", -0.5),
        ("warmup_epochs", -1),
        ("pretrain_epochs", 1.5),
        ("lr_scheduler", "exponential"),
        ("hidden_act", "mish"),
        ("inference_cache", "yes"),
        ("pretrained_embedding", "/no/such/stage1.pth"),
        ("loss_type", "BPR"),
        ("embedding_init_std", 0),
        ("embedding_init_std", -0.02),
    ],
)
def test_bad_hyperparameters_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        ADRec.validate_config(make_config(**{key: value}))
    with pytest.raises(ConfigError):
        ADRec(make_config(**{key: value}), UnitDataset())


def test_gelu_tanh_is_the_reference_codes_tanh_approximation():
    """Catches 'gelu_tanh' built as the exact GELU (the parity check's 2.2e-3
    gap) or the default changed from the exact form the tables used."""
    x = torch.linspace(-3, 3, 61)
    # tanh approximation, written out (Hendrycks & Gimpel 2016)
    tanh_form = (
        0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    )
    for act, expected in (
        ("gelu_tanh", tanh_form),
        ("gelu", x * 0.5 * (1 + torch.erf(x / math.sqrt(2)))),
    ):
        model = make_model(hidden_act=act)
        gelus = [m for m in model.modules() if isinstance(m, torch.nn.GELU)]
        assert gelus, act
        for module in gelus:
            assert torch.allclose(module(x), expected, atol=1e-6), act


@pytest.mark.parametrize("std", [0.02, 1.0])
def test_item_embedding_starts_at_the_configured_scale(std):
    model = make_model(hidden_size=64, embedding_init_std=std)
    weight = model.item_embedding.weight.detach()
    assert torch.all(weight[0] == 0)  # padding row
    assert weight[1:].std().item() == pytest.approx(std, rel=0.15)


def test_zero_loss_weights_are_refused():
    with pytest.raises(ConfigError, match="ce_weight"):
        ADRec.validate_config(make_config(ce_weight=0, mse_weight=0))


def test_pipeline_refuses_bad_steps_before_loading_data(tiny_config):
    with pytest.raises(ConfigError, match="diffusion_steps"):
        build_pipeline(
            "ADRec", "tiny", config_dict={**tiny_config, "diffusion_steps": 0}
        )


# --------------------------------------------------------------------------- #
# per-token noise and the loss
# --------------------------------------------------------------------------- #
def _capture_steps(model):
    steps = []
    original = model.diffusion.q_sample

    def q_sample(x0, t, noise=None):
        steps.append(t.clone())
        return original(x0, t, noise)

    model.diffusion.q_sample = q_sample
    return steps


def test_each_token_gets_its_own_step_and_padding_gets_zero():
    model = make_model(diffusion_steps=32)
    steps = _capture_steps(model)
    batch = make_batch(SEQUENCES * 8)
    under_seed(model.calculate_loss, batch)
    (t,) = steps
    lengths = batch["item_length"]
    assert t.shape == (32, int(lengths.max()))  # [B L'], cut to the longest row
    real = torch.arange(t.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    assert t[~real].eq(0).all()
    assert t[real].min() >= 0 and t[real].max() < 32
    # steps differ across the positions of one row, and across rows
    assert all(
        len(set(row[mask].tolist())) > 1 for row, mask in zip(t, real) if mask.sum() > 3
    )
    assert len(set(t[:, 0].tolist())) > 1


def test_loss_is_weighted_ce_plus_per_sequence_mse():
    model = make_model(ce_weight=0.3, mse_weight=0.7)
    model.eval()  # no dropout, so a second pass reproduces the first
    outputs = []
    model.adm.register_forward_hook(lambda m, args, out: outputs.append(out[0]))
    batch = make_batch(SEQUENCES)
    ce, mse = under_seed(model.calculate_loss, batch)
    (x0_hat,) = outputs
    lengths = batch["item_length"].tolist()
    targets = batch[TARGETS][:, : max(lengths)]
    x0 = model.item_embedding(targets)
    per_row, logits, labels = [], [], []
    for row, length in enumerate(lengths):
        per_row.append(((x0_hat[row, :length] - x0[row, :length]) ** 2).mean())
        logits.append(x0_hat[row, :length] @ model.item_embedding.weight.t())
        labels.append(targets[row, :length])
    expected_ce = torch.nn.functional.cross_entropy(
        torch.cat(logits), torch.cat(labels)
    )
    torch.testing.assert_close(ce, 0.3 * expected_ce)
    torch.testing.assert_close(mse, 0.7 * torch.stack(per_row).mean())


def test_padding_changes_nothing_in_the_loss():
    model = make_model()
    plain = make_batch(SEQUENCES)
    garbage = make_batch(SEQUENCES, fill=5)  # real items in the padding
    wide = make_batch(SEQUENCES, width=12)
    reference = under_seed(model.calculate_loss, plain)
    for other in (garbage, wide):
        for got, want in zip(under_seed(model.calculate_loss, other), reference):
            torch.testing.assert_close(got, want)


def test_gradients_reach_every_part_and_stage_1_trains_the_cam_only():
    model = make_model()
    sum(under_seed(model.calculate_loss, make_batch(SEQUENCES))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name

    model = make_model()
    model.stage = 1
    batch = make_batch(SEQUENCES)
    loss = under_seed(model.calculate_loss, batch)
    loss.backward()
    for name, parameter in model.named_parameters():
        trained = name.startswith(("item_embedding", "embedding_norm", "cam."))
        assert (parameter.grad is not None) == trained, name
    # stage 1 is CE of the CAM's states against the next item at every position
    model.eval()
    lengths = batch["item_length"]
    item_seq = batch["item_id_list"][:, : int(lengths.max())]
    states = model.condition(item_seq)
    real = torch.arange(item_seq.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)
    logits = states[real] @ model.item_embedding.weight.t()
    expected = torch.nn.functional.cross_entropy(
        logits, batch[TARGETS][:, : item_seq.shape[1]][real]
    )
    torch.testing.assert_close(model.calculate_loss(batch), expected)


# --------------------------------------------------------------------------- #
# causality and inference
# --------------------------------------------------------------------------- #
def test_later_items_do_not_change_earlier_positions():
    model = make_model().eval()
    item_seq = torch.tensor([[3, 4, 5, 6, 7, 8]])
    changed = item_seq.clone()
    changed[0, 3:] = torch.tensor([11, 12, 13])
    with torch.no_grad():
        guidance, guidance_changed = model.condition(item_seq), model.condition(changed)
        torch.testing.assert_close(guidance_changed[:, :3], guidance[:, :3])
        assert not torch.allclose(guidance_changed[:, 3:], guidance[:, 3:])
        x_t, t = torch.randn(1, 6, HIDDEN), torch.tensor([[0, 5, 2, 7, 1, 3]])
        x_changed, t_changed = x_t.clone(), t.clone()
        x_changed[:, 3:] = 5 * torch.randn(1, 3, HIDDEN)
        t_changed[:, 3:] = 0
        out = model.denoise(guidance, x_t, t)
        out_changed = model.denoise(guidance_changed, x_changed, t_changed)
        torch.testing.assert_close(out_changed[:, :3], out[:, :3])
        assert not torch.allclose(out_changed[:, 3:], out[:, 3:])


def test_cached_step_equals_the_full_pass_at_that_position():
    torch.manual_seed(0)
    stack = CausalTransformer(
        2,
        hidden_size=HIDDEN,
        n_heads=2,
        inner_size=32,
        hidden_dropout_prob=0.1,
        attn_dropout_prob=0.1,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    ).eval()
    hidden = torch.randn(3, 5, HIDDEN)
    lengths = torch.tensor([5, 3, 1])  # the new token sits at length - 1
    with torch.no_grad():
        full, cache = stack(hidden)
        positions = torch.arange(5).unsqueeze(0)
        history = positions < (lengths - 1).unsqueeze(1)
        last = hidden[torch.arange(3), lengths - 1].unsqueeze(1)
        stepped = stack.step(last, cache, history)
    torch.testing.assert_close(stepped[:, 0], full[torch.arange(3), lengths - 1])


def test_training_attention_with_fast_dropout_is_sdpas_causal_attention(
    monkeypatch,
):
    """Catches the written-out training attention (taken so that its dropout is
    fast_dropout) with a wrong or missing causal mask, the stacked q/k/v
    projection split in the wrong order, or the dropout left off: with the
    masks made the identity it must be SDPA's causal attention over three
    separate projections, and with them on it must drop some weights."""
    from recbole_diffusion import fast_layers
    from recbole_diffusion.model.adrec import CausalSelfAttention

    torch.manual_seed(0)
    layer = CausalSelfAttention(HIDDEN, 2, attn_dropout_prob=0.3)
    layer.fast_attention_dropout = True
    hidden = torch.randn(3, 6, HIDDEN)
    # each projection by its own Linear, heads split by hand
    q, k, v = (
        proj(hidden).view(3, 6, 2, HIDDEN // 2).transpose(1, 2)
        for proj in (layer.query, layer.key, layer.value)
    )
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = layer.output(attended.transpose(1, 2).reshape(3, 6, HIDDEN))
    with monkeypatch.context() as patch:
        patch.setattr(
            fast_layers, "fast_dropout", lambda x, p, training=True, whole=None: x
        )
        got, _ = layer.train()(hidden)
        torch.testing.assert_close(got, expected)
        layer.fused_projection = False  # the switch: three products
        unfused, _ = layer(hidden)
        torch.testing.assert_close(unfused, expected)
        layer.fused_projection = True
    dropped, _ = layer(hidden)
    assert not torch.allclose(dropped, expected)
    attention = make_model().cam.blocks[0].attention
    assert attention.fast_attention_dropout and attention.fused_projection
    switched = make_model(fused_qkv=False, step_embedding_table=False)
    assert not switched.adm.blocks[1].attention.fused_projection
    assert not switched.step_embedding.use_table


@pytest.mark.parametrize("inference_steps", [None, 3])
def test_cached_and_uncached_inference_agree(inference_steps):
    cached = make_model(inference_steps=inference_steps).eval()
    uncached = make_model(inference_steps=inference_steps, inference_cache=False)
    uncached.load_state_dict(cached.state_dict())
    uncached.eval()
    sequences = SEQUENCES + [[9, 3]]  # a row with a one-item history
    batch = make_batch(sequences, with_targets=False)
    fast = scores_under_seed(cached, batch, seed=7)
    slow = scores_under_seed(uncached, batch, seed=7)
    assert fast.shape == (5, N_ITEMS)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


def test_cache_computes_the_history_once():
    model = make_model(diffusion_steps=6).eval()
    lengths = []
    model.cam.register_forward_pre_hook(
        lambda m, args: lengths.append(args[0].shape[1])
    )
    adm_full = []
    model.adm.register_forward_pre_hook(lambda m, args: adm_full.append(1))
    scores_under_seed(model, make_batch(SEQUENCES, with_targets=False))
    assert lengths == [5] and adm_full == [1]  # once, over the cut batch
    model.inference_cache = False
    lengths.clear(), adm_full.clear()
    scores_under_seed(model, make_batch(SEQUENCES, with_targets=False))
    assert len(lengths) == 6 and len(adm_full) == 6  # every step


def test_inference_is_reproducible_and_stochastic():
    model = make_model().eval()
    batch = make_batch(SEQUENCES, with_targets=False)
    first = scores_under_seed(model, batch, seed=5)
    assert torch.equal(first, scores_under_seed(model, batch, seed=5))
    assert not torch.equal(first, scores_under_seed(model, batch, seed=6))


@pytest.mark.parametrize("stage", [1, 3])
def test_predict_agrees_with_full_sort_predict(stage):
    model = make_model().eval()
    model.stage = stage
    batch = make_batch(SEQUENCES, with_targets=False)
    full = scores_under_seed(model, batch, seed=3)
    single = scores_under_seed(model, batch, seed=3, method="predict")
    torch.testing.assert_close(single, full[torch.arange(4), batch["item_id"]])


def test_history_is_held_clean_and_only_the_last_token_is_denoised():
    model = make_model().eval()
    batch = make_batch(SEQUENCES, with_targets=False)
    inputs = []
    model.adm.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    scores_under_seed(model, batch)
    (z_history,) = inputs  # the cached pass: history with t = 0, clean targets
    lengths = batch["item_length"]
    item_seq = batch["item_id_list"][:, : int(lengths.max())]
    guidance = model.condition(item_seq)
    row = 1  # [7, 1, 2, 9, 11]: positions 0..3 hold E[1], E[2], E[9], E[11]
    x0 = model.item_embedding(torch.tensor([1, 2, 9, 11]))
    d0 = model.step_embedding(torch.zeros(4, dtype=torch.long))
    expected = guidance[row, :4] + model.lambda_scale * (x0 + d0)
    torch.testing.assert_close(z_history[row, :4], expected)


# --------------------------------------------------------------------------- #
# the three stages through the pipeline
# --------------------------------------------------------------------------- #
def _pipeline(tiny_config, **overrides):
    config_dict = {**tiny_config, "diffusion_steps": 4, **overrides}
    return build_pipeline("ADRec", "tiny", config_dict=config_dict)


def test_trainer_is_found_and_training_batches_carry_the_targets(tiny_config):
    config, _, train_data, valid_data, _, _ = _pipeline(tiny_config)
    assert get_trainer(config["MODEL_TYPE"], "ADRec") is ADRecTrainer
    assert TARGETS in next(iter(train_data))
    assert TARGETS not in next(iter(valid_data))[0]


def test_stage_2_freezes_the_embedding_exactly_and_stage_3_moves_it(tiny_config):
    config, _, train_data, _, _, model = _pipeline(tiny_config, weight_decay=0.1)
    trainer = ADRecTrainer(config, model)
    embedding = model.item_embedding.weight

    # stage 1 trains only the embedding, its LayerNorm and the CAM (not the
    # ADM, which weight decay would otherwise shrink under DDP)
    trainer._begin_stage(1)
    stage_1 = {
        id(p) for group in trainer.optimizer.param_groups for p in group["params"]
    }
    assert id(embedding) in stage_1
    assert all(id(p) in stage_1 for p in model.cam.parameters())
    assert all(id(p) not in stage_1 for p in model.adm.parameters())
    trainer._train_epoch(train_data, 0)
    assert embedding.grad is not None

    # the real handover: stage 2 after stage 1
    trainer._begin_stage(2)
    assert embedding.grad is None  # no stale stage-1 gradient (clip_grad_norm)
    assert all(
        parameter is not embedding
        for group in trainer.optimizer.param_groups
        for parameter in group["params"]
    )
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer._train_epoch(train_data, 0)
    assert torch.equal(embedding, before["item_embedding.weight"])  # bitwise
    assert embedding.grad is None
    assert not torch.equal(
        model.adm.blocks[0].attention.query.weight,
        before["adm.blocks.0.attention.query.weight"],
    )
    assert not torch.equal(
        model.cam.blocks[0].attention.query.weight,
        before["cam.blocks.0.attention.query.weight"],
    )

    trainer._begin_stage(3)
    trainer._train_epoch(train_data, 0)
    assert embedding.requires_grad
    assert not torch.equal(embedding, before["item_embedding.weight"])


def test_learning_rate_anneals_within_each_stage(tiny_config):
    config, _, train_data, _, _, model = _pipeline(tiny_config, pretrain_epochs=2)
    trainer = ADRecTrainer(config, model)
    trainer._begin_stage(1)
    rates = []
    for epoch in range(2):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer._train_epoch(train_data, epoch)
    assert rates == pytest.approx([1e-3, 0.5e-3])  # cosine over the 2 epochs
    trainer._begin_stage(2)  # a new stage starts again from the full rate
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_three_stages_run_in_order_and_the_best_model_loads(tiny_config, caplog):
    config, _, train_data, valid_data, test_data, model = _pipeline(
        tiny_config, pretrain_epochs=1, warmup_epochs=1, epochs=1
    )
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    with caplog.at_level(logging.INFO):
        score, result = trainer.fit(train_data, valid_data, saved=True)
    assert trainer.stage_history == [1, 2, 3]
    messages = [re.sub(r"\x1b\[[0-9;]*m", "", r.getMessage()) for r in caplog.records]
    started = [m for m in messages if "ADRec stage" in m and "finished" not in m]
    assert [m.split("ADRec stage ")[1][:3] for m in started] == ["1/3", "2/3", "3/3"]
    epochs = [m for m in messages if "training [" in m]
    assert [m.split(" epoch")[0][-7:] for m in epochs] == [
        "stage 1",
        "stage 2",
        "stage 3",
    ]

    for stage in (1, 2, 3):
        assert os.path.isfile(trainer.stage_files[stage])
        stored = load_checkpoint(trainer.stage_files[stage])
        assert stored["adrec_stage"] == stage and stored["stage_completed"]
        assert stored["other_parameter"] == {"stage": stage}
    # the better of stages 2 and 3 on validation, ties to stage 3
    final = 2 if trainer.stage_scores[2] > trainer.stage_scores[3] else 3
    assert trainer.saved_model_file == trainer.stage_files[final]
    assert (
        score
        == trainer.stage_scores[final]
        == max(trainer.stage_scores[s] for s in (2, 3))
    )
    assert result["ndcg@10"] == score

    test_result = trainer.evaluate(test_data, load_best_model=True)
    assert 0 <= test_result["ndcg@10"] <= test_result["hit@10"] <= 1
    _, loaded, _, _, loaded_valid, _ = load_data_and_model(trainer.saved_model_file)
    assert isinstance(loaded, ADRec) and loaded.stage == final
    interaction = next(iter(loaded_valid))[0]
    model.eval()
    torch.testing.assert_close(
        scores_under_seed(loaded, interaction), scores_under_seed(model, interaction)
    )


class _Interrupt(Exception):
    pass


def test_resume_continues_the_interrupted_stage_then_the_next(tiny_config):
    overrides = {"pretrain_epochs": 1, "warmup_epochs": 2, "epochs": 1}
    config, _, train_data, valid_data, _, model = _pipeline(tiny_config, **overrides)
    trainer = ADRecTrainer(config, model)

    def interrupt(epoch, score):
        if trainer.stage == 2:  # after stage 2's first epoch was saved
            raise _Interrupt

    with pytest.raises(_Interrupt):
        trainer.fit(train_data, valid_data, callback_fn=interrupt)
    assert trainer.stage_history == [1]
    stage_2_file = trainer.stage_files[2]
    assert not load_checkpoint(stage_2_file)["stage_completed"]

    config, _, train_data, valid_data, _, model = _pipeline(tiny_config, **overrides)
    resumed = ADRecTrainer(config, model)
    resumed.resume_checkpoint(stage_2_file)
    assert resumed.stage == 2 and resumed.start_epoch == 1
    assert not model.item_embedding.weight.requires_grad
    assert resumed.stage_scores == trainer.stage_scores  # stage 1's, restored
    resumed.fit(train_data, valid_data)
    assert resumed.stage_history == [2, 3]
    assert load_checkpoint(stage_2_file)["stage_completed"]

    # a finished stage's checkpoint starts the next stage, via the entry point:
    # stage 3 is trained again, stage 2 is not
    written = {k: os.stat(resumed.stage_files[k]).st_mtime_ns for k in (2, 3)}
    time.sleep(0.01)
    result = run_recbole_diffusion(
        "ADRec",
        "tiny",
        config_dict={**tiny_config, "diffusion_steps": 4, **overrides},
        resume_file=stage_2_file,
    )
    assert result["model_file"] in (stage_2_file, resumed.stage_files[3])
    assert load_checkpoint(resumed.stage_files[3])["adrec_stage"] == 3
    assert os.stat(stage_2_file).st_mtime_ns == written[2]
    assert os.stat(resumed.stage_files[3]).st_mtime_ns > written[3]


def test_resume_refuses_a_checkpoint_of_another_trainer(tiny_config, tmp_path):
    config, _, _, _, _, model = _pipeline(tiny_config)
    trainer = ADRecTrainer(config, model)
    path = str(tmp_path / "plain.pth")
    torch.save({"state_dict": model.state_dict(), "epoch": 0}, path)
    with pytest.raises(CheckpointError, match="ADRecTrainer"):
        trainer.resume_checkpoint(path)


def test_pretrained_embedding_replaces_stage_1(tiny_config, tmp_path):
    overrides = {"pretrain_epochs": 1, "warmup_epochs": 1, "epochs": 1}
    config, _, train_data, valid_data, _, model = _pipeline(tiny_config, **overrides)
    first = ADRecTrainer(config, model)
    first.fit(train_data, valid_data)
    checkpoint = load_checkpoint(first.stage_files[1])
    stage_1 = checkpoint["state_dict"]
    # a stage-1 file whose (untrained) ADM is marked, to see it is not loaded
    for key in stage_1:
        if key.startswith("adm."):
            stage_1[key] = torch.full_like(stage_1[key], 7.0)
    pretrained_file = str(tmp_path / "stage1.pth")
    torch.save(checkpoint, pretrained_file)

    # from a stage-1 checkpoint: embedding, its LayerNorm and the CAM
    config, _, train_data, valid_data, _, model = _pipeline(
        tiny_config, pretrained_embedding=pretrained_file, **overrides
    )
    trainer = ADRecTrainer(config, model)
    loaded = []
    begin_stage = trainer._begin_stage

    def record_and_begin(stage):  # the weights each stage starts from
        loaded.append({k: v.clone() for k, v in model.state_dict().items()})
        begin_stage(stage)

    trainer._begin_stage = record_and_begin
    trainer.fit(train_data, valid_data)
    assert trainer.stage_history == [2, 3]
    start = loaded[0]
    for key in (
        "item_embedding.weight",
        "embedding_norm.weight",
        "cam.blocks.1.feed_forward.0.weight",
    ):
        assert torch.equal(start[key], stage_1[key]), key
    assert not start["adm.blocks.0.attention.key.weight"].eq(7.0).any()

    # from a bare tensor: the embedding only; a wrong shape is refused
    tensor_file = str(tmp_path / "embedding.pt")
    torch.save(stage_1["item_embedding.weight"], tensor_file)
    config, _, _, _, _, model = _pipeline(tiny_config, pretrained_embedding=tensor_file)
    ADRecTrainer(config, model)._load_pretrained(tensor_file)
    assert torch.equal(model.item_embedding.weight, stage_1["item_embedding.weight"])
    torch.save(torch.zeros(5, HIDDEN), tensor_file)
    with pytest.raises(ConfigError, match="shape"):
        ADRecTrainer(config, model)._load_pretrained(tensor_file)


def test_learns_a_task_that_needs_more_than_the_last_item(recall_data_path, tmp_path):
    """All three stages on data whose next item is an earlier one, never the last.

    Catches: a model that does not learn, or reads the last item alone
    (``conftest.write_recall_dataset``: chance is HR@10 = 0.25). The final
    model is stage 3's, scored by the reverse chain. Measured at seed 2020:
    0.23 before, 0.99 after 5 + 1 + 5 epochs.
    """
    config_dict = {
        "data_path": recall_data_path,
        "checkpoint_dir": str(tmp_path),
        "hidden_size": 32,
        "inner_size": 64,
        "n_heads": 2,
        "cam_layers": 1,
        "adm_layers": 1,
        "diffusion_steps": 4,
        "MAX_ITEM_LIST_LENGTH": 10,
        "train_batch_size": 32,
        "eval_batch_size": 256,
        "learning_rate": 0.005,
        "pretrain_epochs": 5,
        "warmup_epochs": 1,
        "epochs": 5,
        "show_progress": False,
        "worker": 0,
        "seed": 2020,
        "reproducibility": True,
        "state": "ERROR",
    }
    config, _, train_data, _, test_data, model = build_pipeline(
        "ADRec", "recall", config_dict=config_dict
    )
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    before = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    # no validation: its targets are unpredictable here, only the test counts
    trainer.fit(train_data, None, saved=False, show_progress=False)
    assert trainer.stage_history == [1, 2, 3] and model.stage == 3
    after = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    assert before["hit@10"] < 0.45
    assert after["hit@10"] > 0.7
    assert after["ndcg@10"] > before["ndcg@10"] + 0.3
