"""The plugin's foundation: lookups, configuration, datasets, checkpoints, CLI."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import recbole_diffusion.config as config_module
from recbole_diffusion.cli import UsageError, main, parse_args
from recbole_diffusion.config import (
    DatasetNotFoundError,
    build_config,
    known_datasets,
    props_dir,
)
from recbole_diffusion.quick_start import (
    build_pipeline,
    load_data_and_model,
    run_recbole_diffusion,
)
from recbole_diffusion.registry import UnknownModelError, get_model, get_trainer
from recbole_diffusion.trainer import (
    CheckpointError,
    SafeCheckpointMixin,
    Trainer,
    TrainingDivergedError,
    load_checkpoint,
)
from recbole_diffusion.utils import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- #
# lookups
# --------------------------------------------------------------------------- #
def test_get_model_prefers_plugin_then_falls_back_to_recbole():
    assert get_model("DuoRec").__module__ == "recbole_diffusion.model.duorec"
    assert get_model("SASRec").__module__.startswith("recbole.model.sequential")
    assert get_model("BPR").__module__.startswith("recbole.model.general")


def test_unknown_model_lists_models_and_suggests_closest():
    with pytest.raises(UnknownModelError) as error:
        get_model("SASRek")
    message = str(error.value)
    assert "Did you mean 'SASRec'" in message
    assert "DuoRec" in message and "GRU4Rec" in message
    assert "lightgbm" not in message


def test_get_trainer_gives_safe_trainers():
    from recbole.utils import ModelType

    assert get_trainer(ModelType.SEQUENTIAL, "SASRec") is Trainer
    s3rec_trainer = get_trainer(ModelType.SEQUENTIAL, "S3Rec")
    assert issubclass(s3rec_trainer, SafeCheckpointMixin)
    assert s3rec_trainer.__name__ == "S3RecTrainer"


# --------------------------------------------------------------------------- #
# configuration precedence
# --------------------------------------------------------------------------- #
def _write_yaml(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content))
    return str(path)


@pytest.fixture
def layered_props(tmp_path, monkeypatch):
    """A props folder where every layer sets the keys of the layers above it."""
    root = tmp_path / "props"
    shutil.copy(props_dir() / "overall.yaml", tmp_path / "overall_base.yaml")
    overall = yaml.safe_load((tmp_path / "overall_base.yaml").read_text())
    overall.update({"p_overall": "overall", "p_model": "overall", "p_data": "overall"})
    _write_yaml(root / "overall.yaml", overall)
    duorec = yaml.safe_load((props_dir() / "DuoRec.yaml").read_text())
    duorec.update({"p_model": "model", "p_variant": "model", "p_data": "model"})
    _write_yaml(root / "DuoRec.yaml", duorec)
    _write_yaml(
        root / "DuoRec-Fast.yaml", {"p_variant": "variant", "p_data": "variant"}
    )
    _write_yaml(
        root / "datasets" / "tiny.yaml",
        {"p_data": "dataset", "p_user": "dataset", "p_dict": "dataset"},
    )
    monkeypatch.setattr(config_module, "props_dir", lambda: root)
    return tmp_path


def test_precedence_of_every_layer(layered_props, tiny_config):
    user_file = _write_yaml(
        layered_props / "user.yaml",
        {"p_user": "user", "p_dict": "user", "p_cmd": "user"},
    )
    config = build_config(
        model="DuoRec-Fast",
        dataset="tiny",
        config_file_list=[user_file],
        config_dict={**tiny_config, "p_dict": "dict", "p_cmd": "dict"},
        cmd_args={"p_cmd": "cmd"},
    )
    assert config["model"] == "DuoRec"
    assert config["model_variant"] == "DuoRec-Fast"
    assert config["p_overall"] == "overall"
    assert config["p_model"] == "model"
    assert config["p_variant"] == "variant"
    assert config["p_data"] == "dataset"
    assert config["p_user"] == "user"
    assert config["p_dict"] == "dict"
    assert config["p_cmd"] == "cmd"


def test_plugin_defaults_override_recbole_defaults(tiny_config):
    config = build_config(model="SASRec", dataset="tiny", config_dict=tiny_config)
    # RecBole's own default valid metric is MRR@10 and its topk is [10].
    assert config["valid_metric"] == "NDCG@10"
    assert config["topk"] == [5, 10, 20]
    assert config["loss_type"] == "CE"
    assert config["train_neg_sample_args"]["distribution"] == "none"
    assert config["eval_args"]["mode"] == {"valid": "full", "test": "full"}


def test_model_props_are_found():
    duorec_defaults = yaml.safe_load((props_dir() / "DuoRec.yaml").read_text())
    config = build_config(model="DuoRec")
    for key in ("lmd_sem", "tau", "contrast"):
        assert config[key] == duorec_defaults[key]


def test_ml100k_is_the_bundled_default():
    config = build_config(model="SASRec")
    assert config["dataset"] == "ml-100k"
    assert os.path.isfile(os.path.join(config["data_path"], "ml-100k.inter"))
    assert "ml-100k" in known_datasets()


def test_shared_dataset_resolves_by_name(tmp_path, monkeypatch):
    folder = tmp_path / "amazon-beauty"
    folder.mkdir()
    (folder / "amazon-beauty.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n1\t1\t1\n"
    )
    monkeypatch.setenv("RECBOLE_DIFFUSION_DATA", str(tmp_path))
    config = build_config(model="SASRec", dataset="amazon-beauty")
    assert Path(config["data_path"]) == folder.resolve()
    assert config["load_col"] == {"inter": ["user_id", "item_id", "timestamp"]}


@pytest.mark.skipif(
    not (PROJECT_ROOT.parent / "shared" / "datasets").is_dir(),
    reason="the papers' datasets live outside the repository, beside it",
)
def test_papers_datasets_found_beside_the_project(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # from any folder, not only the project root
    for name in ("amazon-beauty", "amazon-toys", "ml-1m"):
        config = build_config(model="SASRec", dataset=name)
        assert os.path.isfile(os.path.join(config["data_path"], f"{name}.inter"))


# --------------------------------------------------------------------------- #
# bad input is refused before any work, with what to change
# --------------------------------------------------------------------------- #
def test_unknown_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("RECBOLE_DIFFUSION_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError) as error:
        build_config(
            model="SASRec",
            dataset="amazon-beuty",
            config_dict={"data_path": str(tmp_path)},
        )
    message = str(error.value)
    assert str(tmp_path) in message
    assert "Did you mean 'amazon-beauty'" in message
    assert "--data_path" in message


def test_missing_config_file_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(model="SASRec", config_file_list=[str(tmp_path / "nope.yaml")])


def test_malformed_yaml_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(model="SASRec", config_file_list=[str(bad)])


def test_unparseable_cmd_value_refused():
    with pytest.raises(ConfigError, match="--epochs=abc"):
        build_config(model="SASRec", cmd_args={"epochs": "abc"})
    with pytest.raises(ConfigError, match="--learning_rate"):
        build_config(model="SASRec", cmd_args={"learning_rate": "fast"})


def test_unknown_metric_refused():
    with pytest.raises(ConfigError, match="Unknown metric 'NDGC'"):
        build_config(model="SASRec", config_dict={"metrics": ["Hit", "NDGC"]})


def test_valid_metric_must_be_computed():
    with pytest.raises(ConfigError, match="valid_metric 'NDCG@50'"):
        build_config(model="SASRec", config_dict={"valid_metric": "NDCG@50"})


def test_model_hyperparameters_validated_up_front():
    with pytest.raises(ConfigError, match="tau"):
        build_config(model="DuoRec", config_dict={"tau": -1.0})


@pytest.mark.parametrize(
    "settings, key",
    [
        ({"lr_scheduler": "exponential"}, "lr_scheduler"),
        ({"lr_scheduler": "step", "lr_milestones": []}, "lr_milestones"),
        ({"lr_scheduler": "step", "lr_milestones": [0]}, "lr_milestones"),
        ({"lr_scheduler": "step", "lr_gamma": 0.0}, "lr_gamma"),
        ({"lr_scheduler": "step", "lr_gamma": 2.0}, "lr_gamma"),
    ],
)
def test_bad_learning_rate_schedule_refused(settings, key):
    with pytest.raises(ConfigError, match=key):
        build_config(model="SASRec", config_dict=settings)


def _epoch_learning_rates(trainer):
    """The learning rate of every training epoch of ``trainer.fit``."""
    rates = []
    train_epoch = trainer._train_epoch

    def recording(*args, **kwargs):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        return train_epoch(*args, **kwargs)

    trainer._train_epoch = recording
    return rates


def test_step_schedule_decays_at_its_milestones_and_resumes(tiny_config):
    settings = {
        **tiny_config,
        "epochs": 4,
        "stopping_step": 10,
        "learning_rate": 0.01,
        "lr_scheduler": "step",
        "lr_milestones": [2],
        "lr_gamma": 0.1,
    }
    config, _, train_data, valid_data, _, model = build_pipeline(
        model="GRU4Rec", dataset="tiny", config_dict=settings
    )
    trainer = Trainer(config, model)
    rates = _epoch_learning_rates(trainer)
    trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    assert rates == pytest.approx([0.01, 0.01, 0.001, 0.001])

    # a run resumed after epoch 0 continues the schedule where it left off
    # (a fresh scheduler would decay one epoch late)
    config, _, train_data, valid_data, _, model = build_pipeline(
        model="GRU4Rec", dataset="tiny", config_dict=settings
    )
    interrupted = Trainer(config, model)
    interrupted._train_epoch(train_data, 0)
    interrupted._save_checkpoint(0, verbose=False)
    config, _, train_data, valid_data, _, model = build_pipeline(
        model="GRU4Rec", dataset="tiny", config_dict=settings
    )
    resumed = Trainer(config, model)
    resumed.resume_checkpoint(interrupted.saved_model_file)
    rates = _epoch_learning_rates(resumed)
    resumed.fit(train_data, valid_data, saved=False, show_progress=False)
    assert rates == pytest.approx([0.01, 0.001, 0.001])


def test_diffurecsys_defaults_decay_the_learning_rate_from_epoch_30():
    config = build_config(model="DiffuRecSys")
    assert (config["lr_scheduler"], config["lr_milestones"], config["lr_gamma"]) == (
        "step",
        [30],
        0.1,
    )
    assert config["epochs"] == 41 and config["stopping_step"] >= 41
    assert build_config(model="SASRec")["lr_scheduler"] == "none"


@pytest.mark.parametrize(
    "model", ["ADRec", "CDDRec", "DiffuRec", "DiffuRecSys", "DuoRec"]
)
def test_heads_that_do_not_split_hidden_size_refused(model):
    with pytest.raises(ConfigError, match="hidden_size=30 is not divisible by n_heads"):
        build_config(model=model, config_dict={"hidden_size": 30, "n_heads": 4})


@pytest.mark.parametrize(
    "argv, reason",
    [
        (["--model"], "expected one argument"),
        (["SASRec"], "--key=value"),
        (["--model=SASRek"], "Unknown model 'SASRek'"),
        (["--model=SASRec", "--dataset=nope"], "Dataset 'nope' not found"),
        (["--model=SASRec", "--epochs=abc"], "--epochs=abc"),
        (["--model=SASRec", "--config_files=missing.yaml"], "does not exist"),
    ],
)
def test_cli_usage_errors_exit_2_with_one_line(argv, reason, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert reason in err
    assert len(err.splitlines()) == 1


def test_cli_parses_flags_and_parameters():
    flags, params = parse_args(
        ["--model=SASRec", "--config_files=a.yaml b.yaml", "--epochs=5", "--x=a=b"]
    )
    assert flags == {"model": "SASRec", "config_files": ["a.yaml", "b.yaml"]}
    assert params == {"epochs": "5", "x": "a=b"}
    with pytest.raises(UsageError):
        parse_args(["--epochs=1", "--epochs=2"])


# --------------------------------------------------------------------------- #
# baselines through the pipeline, checkpoints, resume, divergence
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec", "BERT4Rec"])
def test_baseline_trains_one_epoch(model, tiny_config):
    result = run_recbole_diffusion(model=model, dataset="tiny", config_dict=tiny_config)
    for metric in (
        "hit@5",
        "hit@10",
        "hit@20",
        "ndcg@5",
        "ndcg@10",
        "ndcg@20",
        "mrr@10",
    ):
        assert 0.0 <= result["test_result"][metric] <= 1.0
        assert metric in result["best_valid_result"]
    assert os.path.isfile(result["model_file"])


def test_checkpoint_loads_with_weights_only_and_gives_topk(tiny_config):
    from recbole.utils.case_study import full_sort_topk

    result = run_recbole_diffusion(
        model="SASRec", dataset="tiny", config_dict=tiny_config
    )
    raw = torch.load(result["model_file"], weights_only=True)
    assert isinstance(raw["config"], dict) and raw["config"]["model"] == "SASRec"

    config, model, dataset, _, _, test_data = load_data_and_model(result["model_file"])
    assert config["MAX_ITEM_LIST_LENGTH"] == tiny_config["MAX_ITEM_LIST_LENGTH"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, raw["state_dict"][name])
    users = dataset.token2id(dataset.uid_field, ["u1", "u2", "u3"])
    scores, items = full_sort_topk(
        users, model, test_data, k=5, device=config["device"]
    )
    assert items.shape == (3, 5)
    assert (items > 0).all()  # the padding item is never recommended


def test_unsafe_checkpoint_refused(tmp_path, tiny_config):
    # A checkpoint as RecBole's own trainer writes it: the Config object pickled.
    config = build_config(model="SASRec", dataset="tiny", config_dict=tiny_config)
    path = tmp_path / "recbole.pth"
    torch.save({"config": config, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


class _Payload:
    """Unpickling this calls ``Path.touch`` on the marker: code run by a load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


@pytest.mark.parametrize("entry", ["resume", "recommend", "load_data_and_model"])
def test_a_payload_checkpoint_never_runs(
    entry, tmp_path, tiny_config, monkeypatch, capsys
):
    """Catches any checkpoint load without weights_only=True (the payload would
    create the marker), and a refusal that leaves a log or a traceback."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"config": _Payload(marker), "state_dict": {}}, path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    settings = [f"--{k}={v}" for k, v in tiny_config.items() if k != "checkpoint_dir"]
    if entry == "load_data_and_model":
        with pytest.raises(CheckpointError, match="cannot be loaded safely"):
            load_data_and_model(str(path))
    else:
        argv = (
            ["--model=SASRec", "--dataset=tiny", f"--resume={path}", *settings]
            if entry == "resume"
            else ["--recommend", f"--model_file={path}", "--user_ids=1"]
        )
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "cannot be loaded safely" in err
    assert not marker.exists()
    assert list(work.iterdir()) == []  # no log of a run that never started


def test_resume_continues_from_the_next_epoch(tiny_config):
    first = run_recbole_diffusion(
        model="GRU4Rec", dataset="tiny", config_dict=tiny_config
    )
    config, _, train_data, valid_data, _, model = build_pipeline(
        model="GRU4Rec", dataset="tiny", config_dict={**tiny_config, "epochs": 2}
    )
    trainer = Trainer(config, model)
    checkpoint = trainer.resume_checkpoint(first["model_file"])
    assert trainer.start_epoch == checkpoint["epoch"] + 1 == 1
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    assert load_checkpoint(trainer.saved_model_file)["epoch"] in (0, 1)


def test_runs_started_in_the_same_second_keep_their_own_checkpoints(
    tiny_config, monkeypatch
):
    """Catches a checkpoint named by the start time alone: two tuning trials
    (or parallel jobs) started in the same second overwrote each other's."""
    import recbole.trainer.trainer as recbole_trainer

    monkeypatch.setattr(
        recbole_trainer, "get_local_time", lambda: "Dec-06-2026_12-00-00"
    )
    config, *_, model = build_pipeline(
        model="GRU4Rec", dataset="tiny", config_dict=tiny_config
    )
    names = {Trainer(config, model).saved_model_file for _ in range(3)}
    assert len(names) == 3
    assert all("Dec-06-2026_12-00-00" in name for name in names)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tiny_config):
    config, _, train_data, valid_data, _, model = build_pipeline(
        model="SASRec", dataset="tiny", config_dict={**tiny_config, "epochs": 3}
    )
    trainer = Trainer(config, model)
    real_loss = model.calculate_loss
    batches_per_epoch = len(train_data)
    calls = {"n": 0}

    def loss_that_diverges_in_epoch_two(interaction):
        calls["n"] += 1
        loss = real_loss(interaction)
        return loss * float("nan") if calls["n"] > batches_per_epoch else loss

    model.calculate_loss = loss_that_diverges_in_epoch_two
    with pytest.raises(TrainingDivergedError) as error:
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    assert "epoch 1" in str(error.value)
    assert trainer.saved_model_file in str(error.value)
    kept = load_checkpoint(trainer.saved_model_file)
    assert kept["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in kept["state_dict"].values())


# --------------------------------------------------------------------------- #
# packaging: the defaults are found from an installed wheel
# --------------------------------------------------------------------------- #
def test_wheel_ships_property_files(tmp_path):
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    # Build from a copy: setuptools reuses a build/ folder left in the source
    # tree, which could hold files that setup.cfg no longer ships.
    source = tmp_path / "source"
    shutil.copytree(
        PROJECT_ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".*", "build", "dist", "*.egg-info", "benchmarks", "saved", "log*"
        ),
    )
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(source),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(wheel_dir.glob("recbole_diffusion-*.whl"))
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr
    probe = (
        "import recbole_diffusion.config as c; "
        "print(c.props_dir()); print(c.build_config(model='DuoRec')['lmd_sem'])"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    found_dir, lmd_sem = out.stdout.split()[-2:]
    assert Path(found_dir).resolve().is_relative_to(site.resolve())
    assert (
        float(lmd_sem)
        == yaml.safe_load((props_dir() / "DuoRec.yaml").read_text())["lmd_sem"]
    )

    # every property and search-space file of the source tree is in the wheel
    def shipped(root):
        return {
            str(path.relative_to(root))
            for pattern in ("*.yaml", "*.hyper")
            for path in Path(root).rglob(pattern)
        }

    assert shipped(found_dir) == shipped(PROJECT_ROOT / "props")
