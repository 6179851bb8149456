"""RecBole's own settings are refused up front for every model: one line, exit 2,
nothing written. Each case caught a traceback from torch or RecBole, or (a
negative epochs) a run that reported an untrained model with exit 0."""

import pytest

from recbole_diffusion import cli
from recbole_diffusion.config import build_config
from recbole_diffusion.utils import ConfigError

BAD_VALUES = [
    ("learning_rate", "-0.001"),
    ("learning_rate", "0"),
    ("train_batch_size", "0"),
    ("eval_batch_size", "0"),
    ("MAX_ITEM_LIST_LENGTH", "0"),
    ("hidden_dropout_prob", "1.5"),
    ("attn_dropout_prob", "-0.1"),
    ("epochs", "-3"),
    ("epochs", "0"),
    ("epochs", "1.5"),
    ("eval_step", "0"),
    ("stopping_step", "0"),
    ("topk", "[10,0]"),
    ("weight_decay", "-1"),
    ("use_gpu", "maybe"),
]


def _run(model, settings, extra, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [f"--model={model}", "--dataset=tiny"]
    argv += [f"--{k}={v}" for k, v in settings.items()] + extra
    status = cli.main(argv)
    return status, capsys.readouterr().err


def _assert_refused(status, err, key, tmp_path, allowed=()):
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and key in lines[0] and "Traceback" not in err
    # Nothing ran: no log, no checkpoint, no results.
    assert {p.name for p in tmp_path.iterdir()} <= set(allowed), list(
        tmp_path.iterdir()
    )


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_sasrec_bad_setting_is_refused_with_one_line(
    key, value, tiny_config, tmp_path, monkeypatch, capsys
):
    """Catches a RecBole key that reaches torch or the trainer unchecked."""
    settings = {k: v for k, v in tiny_config.items() if k != "checkpoint_dir"}
    settings[key] = value
    status, err = _run("SASRec", settings, [], tmp_path, monkeypatch, capsys)
    _assert_refused(status, err, key, tmp_path)


@pytest.mark.parametrize("model", ["GRU4Rec", "DiffuRec", "ADRec", "SASRec+"])
def test_other_models_refuse_a_zero_batch(
    model, tiny_config, tmp_path, monkeypatch, capsys
):
    """Catches checks wired to one model only (RecBole's baselines included)."""
    settings = {k: v for k, v in tiny_config.items() if k != "checkpoint_dir"}
    settings["train_batch_size"] = "0"
    status, err = _run(model, settings, [], tmp_path, monkeypatch, capsys)
    _assert_refused(status, err, "train_batch_size", tmp_path)


def test_wrong_type_in_a_yaml_file_is_refused(
    tiny_config, tmp_path, monkeypatch, capsys
):
    """Catches 'epochs: ten' in a property file reaching range() as a string."""
    settings = {k: v for k, v in tiny_config.items() if k not in ("checkpoint_dir",)}
    settings.pop("epochs")
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("epochs: ten\n", encoding="utf-8")
    status, err = _run(
        "SASRec",
        settings,
        [f"--config_files={yaml_file}"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    _assert_refused(status, err, "epochs", tmp_path, {"mine.yaml"})
    assert "'ten'" in err


def test_python_api_refuses_a_negative_learning_rate(tiny_config):
    """Catches checks that only the command line runs."""
    with pytest.raises(ConfigError, match="learning_rate=-1"):
        build_config("SASRec", "tiny", config_dict={**tiny_config, "learning_rate": -1})


def test_valid_settings_pass(tiny_config):
    """Catches a check that refuses RecBole's or the plugin's own defaults."""
    for model in ("SASRec", "GRU4Rec", "BERT4Rec", "DiffuRec", "ADRec", "CDDRec"):
        config = build_config(model, "tiny", config_dict=dict(tiny_config))
        assert config["train_batch_size"] == tiny_config["train_batch_size"]
