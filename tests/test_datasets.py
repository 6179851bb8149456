"""Making atomic files from the papers' pickled releases, and refusing unsafe pickles."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_diffusion import datasets
from recbole_diffusion.datasets import (
    UnsafePickleError,
    load_plain_pickle,
    prepare,
    read_release,
)
from recbole_diffusion.utils import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# Two users as the releases hold them (train / val / test), and the file that
# those sequences must give, written out by hand.
RELEASE = {
    "train": {0: [1, 2, 3], 1: [4, 5]},
    "val": {0: [4], 1: [6]},
    "test": {0: [5], 1: [1]},
    "umap": {10: 0, 11: 1},
    "smap": {100: 1, 101: 2},
}
EXPECTED_INTER = (
    "user_id:token\titem_id:token\ttimestamp:float\n"
    "0\t1\t0\n0\t2\t1\n0\t3\t2\n0\t4\t3\n0\t5\t4\n"
    "1\t4\t0\n1\t5\t1\n1\t6\t2\n1\t1\t3\n"
)


class WritesMarker:
    """A pickle payload: unpickling it calls ``Path.touch`` on the marker."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _pickle(path, obj):
    path.write_bytes(pickle.dumps(obj))
    return path


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "recbole_diffusion.datasets", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_prepare_writes_the_sequences_in_order_with_positions(tmp_path):
    """Catches a wrong split order, a timestamp that is not the position, users reordered."""
    source = _pickle(tmp_path / "dataset.pkl", RELEASE)
    target, verdict = prepare("tiny", source, tmp_path / "out")
    assert target == tmp_path / "out" / "tiny" / "tiny.inter"
    assert target.read_text() == EXPECTED_INTER
    assert "not one of the known releases" in verdict
    assert not list(target.parent.glob("*.partial"))


def test_prepare_recognises_a_release_by_its_checksum(tmp_path, monkeypatch):
    """Catches a verdict that claims a match without comparing the bytes."""
    import hashlib

    source = _pickle(tmp_path / "dataset.pkl", RELEASE)
    digest = hashlib.sha256(EXPECTED_INTER.encode()).hexdigest()
    release = datasets.Release("x/dataset.pkl", "0" * 64, digest)
    monkeypatch.setitem(datasets.RELEASES, "tiny", release)
    _, verdict = prepare("tiny", source, tmp_path / "out")
    assert "byte for byte" in verdict
    other = dict(RELEASE, test={0: [5], 1: [2]})
    _, verdict = prepare("tiny", _pickle(tmp_path / "other.pkl", other), tmp_path / "o")
    assert "byte for byte" not in verdict and "not the published release" in verdict


def test_the_shipped_checksums_are_those_of_the_shared_files():
    """Catches a checksum in RELEASES that does not describe the benchmarks' files."""
    import hashlib

    shared = ROOT.parent / "shared" / "datasets"
    if not shared.is_dir():
        pytest.skip("../shared/datasets is not beside the project")
    for name, release in datasets.RELEASES.items():
        data = (shared / name / f"{name}.inter").read_bytes()
        assert hashlib.sha256(data).hexdigest() == release.inter_sha256, name


def test_prepared_file_loads_in_recbole(tmp_path):
    """Catches a header or separator that RecBole's loader would misread."""
    from recbole_diffusion.config import build_config
    from recbole_diffusion.quick_start import create_dataset

    source = _pickle(tmp_path / "dataset.pkl", RELEASE)
    prepare("tiny", source, tmp_path / "out")
    config = build_config(
        model="SASRec",
        dataset="tiny",
        config_dict={
            "data_path": str(tmp_path / "out"),
            "user_inter_num_interval": None,
        },
    )
    dataset = create_dataset(config)
    assert dataset.inter_num == 9
    assert dataset.user_num - 1 == 2 and dataset.item_num - 1 == 6


def test_a_payload_pickle_is_refused_before_it_runs(tmp_path):
    """Catches a loader that uses pickle.load (the payload would create the marker)."""
    marker = tmp_path / "ran"
    source = _pickle(tmp_path / "evil.pkl", {"train": WritesMarker(marker)})
    with pytest.raises(UnsafePickleError, match="pathlib"):
        load_plain_pickle(source)
    assert not marker.exists()
    # The payload is real: plain pickle runs it.
    pickle.loads(source.read_bytes())
    assert marker.exists()


def test_cli_refuses_a_payload_pickle_with_one_line_and_exit_2(tmp_path):
    marker = tmp_path / "ran"
    source = _pickle(tmp_path / "evil.pkl", WritesMarker(marker))
    result = _cli("prepare", "tiny", f"--source={source}", "--output=out", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "refused" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "release, message",
    [
        ([1, 2, 3], "expected a dict with 'train', 'val' and 'test'"),
        ({"train": {0: [1]}, "val": {0: [2]}}, "expected a dict"),
        ({"train": {0: [1]}, "val": {0: [2]}, "test": {1: [3]}}, "the same users"),
        ({"train": {0: [1, "a"]}, "val": {0: [2]}, "test": {0: [3]}}, "integers"),
        ({"train": {}, "val": {}, "test": {}}, "no users"),
    ],
)
def test_a_file_that_is_not_a_release_is_refused(tmp_path, release, message):
    """Catches a converter that writes a file from a malformed release."""
    with pytest.raises(ConfigError, match=message):
        read_release(_pickle(tmp_path / "bad.pkl", release))


def test_cli_refuses_a_missing_or_foreign_file(tmp_path):
    result = _cli("prepare", "tiny", "--source=nope.pkl", cwd=tmp_path)
    assert result.returncode == 2 and "no such file" in result.stderr
    (tmp_path / "text.pkl").write_text("not a pickle")
    result = _cli("prepare", "tiny", "--source=text.pkl", cwd=tmp_path)
    assert result.returncode == 2 and "not a readable pickle" in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "datasets").exists()


def test_cli_writes_the_file_and_says_how_to_train_on_it(tmp_path):
    _pickle(tmp_path / "dataset.pkl", RELEASE)
    result = _cli("prepare", "tiny", f"--source={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "datasets" / "tiny" / "tiny.inter").read_text() == EXPECTED_INTER
    assert "--dataset=tiny --data_path=" in result.stdout
