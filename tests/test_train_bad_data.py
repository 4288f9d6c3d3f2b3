"""An image that does not decode: `archc train` stops naming it (default, nothing written to the
run directory) or, with --on-bad-data skip, leaves it out and says so; curves.png is drawn after
every epoch and no temporary file is left behind."""
from __future__ import annotations

from train_helpers import run_cli, write_random


def _data_with_a_broken_image(root):
    data = write_random(root, classes=3, per_class=8, mode="L")
    (data / "class1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return data


def test_bad_image_stops_with_its_name_and_writes_nothing(tmp_path):
    data = _data_with_a_broken_image(tmp_path / "data")
    r = run_cli(["train", "lenet5", "--data", data, "--epochs", 1, "--batch", 8, "--out", tmp_path / "run"])
    assert r.returncode == 2
    assert "broken.png" in r.stderr and "--on-bad-data skip" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert not (tmp_path / "run").exists()


def test_bad_image_skipped_when_asked(tmp_path):
    data = _data_with_a_broken_image(tmp_path / "data")
    run = tmp_path / "run"
    r = run_cli(["train", "lenet5", "--data", data, "--epochs", 2, "--batch", 8, "--val-split", "0",
                 "--on-bad-data", "skip", "--out", run, "--quiet"])
    assert r.returncode == 0, r.stderr
    assert "skipping 1 unreadable image" in r.stderr and "broken.png" in r.stderr
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
