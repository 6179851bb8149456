"""Atomic files are checked before RecBole parses them: one line naming the
file, the line and the fix, exit 2, nothing written. Each case below ended in
a traceback from pandas or RecBole (ValueError, KeyError) before."""

import pytest

from recbole_diffusion import cli, data_check
from recbole_diffusion.config import build_config
from recbole_diffusion.quick_start import create_dataset
from recbole_diffusion.utils import ConfigError

HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"
ROWS = "".join(f"{u}\t{i}\t{u * 10 + i}\n" for u in range(1, 6) for i in range(1, 8))


def _write(tmp_path, text, mode="w"):
    folder = tmp_path / "data" / "bad"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bad.inter"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _run(tmp_path, monkeypatch, capsys, tiny_config, extra=()):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    settings = {
        k: v for k, v in tiny_config.items() if k not in ("checkpoint_dir", "data_path")
    }
    argv = ["--model=SASRec", "--dataset=bad", f"--data_path={tmp_path / 'data'}"]
    argv += [f"--{k}={v}" for k, v in settings.items()] + list(extra)
    status = cli.main(argv)
    err = capsys.readouterr().err
    return status, err, work


CASES = [
    ("header only", HEADER, "has a header but no data rows"),
    ("no header", "1\t2\t3\n1\t3\t4\n", "line 1: column '1' has no type"),
    (
        "comma-separated",
        HEADER.replace("\t", ",") + "1,2,3\n",
        "line 1 is comma-separated",
    ),
    (
        "untyped header",
        "user_id\titem_id\ttimestamp\n1\t2\t3\n",
        "column 'user_id' has no type",
    ),
    (
        "unknown type",
        "user_id:token\titem_id:int\ttimestamp:float\n1\t2\t3\n",
        "column 'item_id' has type 'int'",
    ),
    (
        "no item_id",
        "user_id:token\ttimestamp:float\n1\t3\n",
        "line 1 has no column 'item_id'",
    ),
    (
        "no timestamp",
        "user_id:token\titem_id:token\n1\t2\n1\t3\n",
        "line 1 has no column 'timestamp'",
    ),
    (
        "non-numeric timestamp",
        HEADER + "1\t2\t3\n1\t3\tlate\n",
        "line 3: 'late' in column 'timestamp' (type float) is not a number",
    ),
    (
        "extra field",
        HEADER + "1\t2\t3\n1\t3\t4\t5\n",
        "line 3 has 4 fields, the header 3",
    ),
    (
        "undecodable bytes",
        (HEADER + "1\t2\t3\n").encode() + b"1\t\xff\xfe\t4\n",
        "line 3 is not valid text",
    ),
]


@pytest.mark.parametrize(
    ("case", "content", "reason"), CASES, ids=[c[0] for c in CASES]
)
def test_a_malformed_atomic_file_is_refused_with_one_line(
    case, content, reason, tmp_path, monkeypatch, capsys, tiny_config
):
    """Catches a malformed .inter reaching RecBole's parser (a traceback, or
    a run that starts and fails minutes later) or a message without the file."""
    path = _write(tmp_path, content)
    status, err, work = _run(tmp_path, monkeypatch, capsys, tiny_config)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(path) in lines[0] and reason in lines[0], lines[0]
    assert list(work.iterdir()) == []  # no log, no checkpoint


def test_the_time_column_is_needed_only_by_the_time_ordered_split(
    tmp_path, monkeypatch, capsys, tiny_config
):
    """Catches a timestamp demanded although eval_args orders randomly (RO)."""
    rows = "".join(line.rsplit("\t", 1)[0] + "\n" for line in ROWS.splitlines())
    _write(tmp_path, "user_id:token\titem_id:token\n" + rows)
    config = build_config(
        "SASRec",
        "bad",
        config_dict={
            **tiny_config,
            "data_path": str(tmp_path / "data"),
            "load_col": {"inter": ["user_id", "item_id"]},
            "eval_args": {
                "split": {"LS": "valid_and_test"},
                "order": "RO",
                "group_by": "user",
                "mode": "full",
            },
        },
    )
    assert config["eval_args"]["order"] == "RO"


def test_load_col_must_keep_the_needed_columns(tmp_path, tiny_config):
    """Catches load_col dropping item_id, which ends in a KeyError in RecBole."""
    _write(tmp_path, HEADER + ROWS)
    with pytest.raises(ConfigError, match=r"load_col\['inter'\] leaves out 'item_id'"):
        build_config(
            "SASRec",
            "bad",
            config_dict={
                **tiny_config,
                "data_path": str(tmp_path / "data"),
                "load_col": {"inter": ["user_id", "timestamp"]},
            },
        )


def test_a_valid_file_passes_and_is_read_once_until_it_changes(tmp_path, monkeypatch):
    """Catches a check that re-reads every file at every tuning trial, or one
    that keeps trusting a file after it was edited."""
    path = _write(tmp_path, HEADER + ROWS)
    config = {
        "data_path": str(path.parent),
        "dataset": "bad",
        "eval_args": {"order": "TO"},
    }
    reads = []
    real = data_check._check_rows

    def counting(*args):
        reads.append(1)
        return real(*args)

    monkeypatch.setattr(data_check, "_check_rows", counting)
    data_check.check_atomic_files(config)
    data_check.check_atomic_files(config)
    assert len(reads) == 1
    path.write_text(HEADER + ROWS + "1\t2\tlate\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'late'"):
        data_check.check_atomic_files(config)


def test_bundled_and_shared_datasets_pass(tiny_config):
    """Catches a check that refuses RecBole's own ml-100k file (its header has
    a rating column the plugin does not load)."""
    config = build_config("SASRec", "ml-100k")
    assert config["dataset"] == "ml-100k"


def test_nothing_left_after_filtering_is_refused_with_the_filter(
    tiny_config, tmp_path, monkeypatch, capsys
):
    """Catches filters that remove every interaction reaching RecBole's split
    (an IndexError), and the log of the refused run left behind."""
    settings = {**tiny_config, "user_inter_num_interval": "[1000,inf)"}
    config = build_config("SASRec", "tiny", config_dict=settings)
    with pytest.raises(ConfigError, match=r"user_inter_num_interval=\[1000,inf\)"):
        data_check.check_interactions_left(config, create_dataset(config))
    monkeypatch.chdir(tmp_path)
    argv = ["--model=SASRec", "--dataset=tiny"]
    argv += [f"--{k}={v}" for k, v in settings.items() if k != "checkpoint_dir"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no interactions left" in err
    assert not (tmp_path / "log").exists()  # the run's log was removed
