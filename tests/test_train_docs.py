"""docs/training.md's own loop runs as written, and learns (the shapes it reads are generated)."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from train_helpers import SMALL_NET, write_shapes

DOC = Path(__file__).resolve().parent.parent / "docs" / "training.md"
NET = SMALL_NET


def test_the_documented_user_loop_runs_and_learns(tmp_path, monkeypatch):
    text = DOC.read_text()
    block = re.search(r"<!-- tests/test_train_docs.py runs this block -->\n```python\n(.*?)```", text, re.S)
    assert block, "the loop's code block is gone from docs/training.md"
    write_shapes(tmp_path / "shapes", kinds=("circle", "square", "triangle"), per_class=48, seed=0)
    (tmp_path / "net.arch").write_text(NET)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(block.group(1), str(DOC), "exec"), scope)
    printed = out.getvalue()
    assert "epoch 8:" in printed and "val: loss" in printed
    assert scope["metrics"]["focal"] >= 0                  # the custom loss ran, by its name
    losses = [float(v) for v in re.findall(r"epoch \d+: loss ([\d.]+)", printed)]
    assert losses[-1] < losses[0]
    val_accuracy = float(re.search(r"top-1 ([\d.]+)", printed).group(1))
    print(printed)
    assert val_accuracy >= 0.8
