"""What a new user hit in their first hour (issue 27), driven as they drove it: options and
operands in any order, a command's own usage on a usage error, a missing package reported in one
line, `--version`, several files to `check`, `list` with task/input/params and a filter,
`lsp --check`, the files' permissions, human sizes, `relu6_1`, a misspelt keyword, the interrupt
message and a resumed run's summary; the Python API's summary, rng name and input checks."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import jax
import numpy as np
import pytest

import archc
from archc.runtime.variables_io import save_variables

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=None, umask=None, timeout=300):
    command = [sys.executable, "-m", "archc", *map(str, args)]
    if umask is not None:            # through the shell: no fork of this (multithreaded) process
        command = ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *command]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          cwd=cwd, timeout=timeout)


def no_traceback(r):
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """scikit-image's photos as the user's files: chelsea.jpg (a cat), astronaut.png."""
    from PIL import Image
    from skimage import data
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.chelsea()).save(d / "chelsea.jpg")
    Image.fromarray(data.astronaut()).save(d / "astronaut.png")
    return d


# ---- 1. options and operands in any order; the command's own usage --------------------------
def test_predict_takes_the_image_after_other_options(photos, tmp_path):
    """`archc predict resnet18 --weights r18.safetensors --top 1 chelsea.jpg`, as the user typed it."""
    weights = tmp_path / "r18.safetensors"
    save_variables(archc.load("resnet18").init(seed=0), weights)
    r = no_traceback(run_cli("predict", "resnet18", "--weights", weights, "--top", "1", "chelsea.jpg", cwd=photos))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "chelsea.jpg" and len(lines) == 2 and re.fullmatch(r"  \S+ \(\d+\.\d\d%\)", lines[1]), r.stdout
    # the same with the images first and the options last, several images, --json
    r = no_traceback(run_cli("predict", "chelsea.jpg", "astronaut.png", "--json", "--top", "2", "--weights", weights,
                             cwd=photos))
    assert r.returncode == 2 and "chelsea.jpg is an image; give the network first" in r.stderr
    r = no_traceback(run_cli("predict", "resnet18", "chelsea.jpg", "--json", "astronaut.png", "--top", "2",
                             "--weights", weights, cwd=photos))
    assert r.returncode == 0, r.stderr
    assert [e["file"] for e in json.loads(r.stdout)] == ["chelsea.jpg", "astronaut.png"]


def test_detect_takes_the_image_after_other_options(photos, tmp_path):
    """`archc detect SPEC --weights W --out out4 --limit 1 astronaut.png`."""
    from test_detection_cli import TINY
    spec = tmp_path / "tiny.arch"
    spec.write_text(TINY)
    weights = tmp_path / "tiny.safetensors"
    save_variables(archc.load(str(spec)).init(seed=1), weights)
    out = tmp_path / "out4"
    r = no_traceback(run_cli("detect", spec, "--weights", weights, "--out", out, "--limit", "1",
                             photos / "astronaut.png"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{photos / 'astronaut.png'}: ") and (out / "astronaut.png").is_file()
    assert len([l for l in r.stdout.splitlines() if l.startswith("  0.")]) <= 1      # --limit 1


@pytest.mark.parametrize("command", ["predict", "detect", "segment", "check", "build", "export", "train", "list", "import"])
def test_a_usage_error_shows_the_command_usage(command):
    r = no_traceback(run_cli(command, "lenet5", "--no-such-option"))
    assert r.returncode == 2
    assert r.stderr.startswith(f"usage: archc {command} "), r.stderr
    assert "unrecognized arguments: --no-such-option" in r.stderr or "required" in r.stderr


def test_predict_without_a_network_does_not_suggest_expr(photos):
    """`archc predict --weights X img.jpg`: the image took the network's place; no `--expr`."""
    r = no_traceback(run_cli("predict", "--weights", "X", "chelsea.jpg", cwd=photos))
    assert r.returncode == 2 and "--expr" not in r.stderr
    assert "give the network first: archc predict SPEC --weights FILE IMAGE" in r.stderr
    r = no_traceback(run_cli("predict", "--weights", "X"))
    assert r.returncode == 2 and r.stderr == "error: no images given: archc predict SPEC --weights FILE IMAGE...\n"
    r = no_traceback(run_cli("export", "--out", "m.onnx"))
    assert r.returncode == 2 and r.stderr == "error: give a spec (a built-in name or an .arch file)\n"
    r = no_traceback(run_cli("check"))           # check does take --expr
    assert r.returncode == 2 and "or --expr TEXT" in r.stderr


# ---- 2. a package that is not there: one line, exit 2 ----------------------------------------
@pytest.mark.parametrize("missing, args", [
    ("onnx", ["export", "lenet5", "--out", "m.onnx"]),
    ("onnxruntime", ["bench", "lenet5", "--backend", "onnxruntime", "--iters", "1", "--repeats", "1"]),
    ("pygls", ["lsp"]),
])
def test_a_missing_package_is_one_line_and_exit_2(missing, args, tmp_path):
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            f"from archc.cli import main; sys.exit(main({args!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)
    no_traceback(r)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: archc {args[0]} needs the Python package {missing}, which is not "
                                f"installed here: pip install {missing}"), r.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_the_documented_commands_need_no_extra():
    """The main install has what `export`, `bench --backend onnxruntime`, `lsp` and COCO need."""
    import tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=\[ ]", d)[0] for d in deps}
    assert {"onnx", "onnxruntime", "pygls", "pycocotools"} <= names


# ---- 7. the Python API ------------------------------------------------------------------------
def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout == f"archc {version('archc')}\n"
    assert archc.__version__ == version("archc")


def test_summary_prints_the_table_and_returns_the_data(capsys):
    model = archc.load("lenet5")
    s = model.summary()
    shown = capsys.readouterr().out
    r = run_cli("build", "lenet5", "--no-lower")          # the same table as `archc build`
    assert shown.strip() == r.stdout.strip()
    assert "Total params: 61,706" in shown and s["total_params"] == 61_706
    assert [l["name"] for l in s["layers"]] == list(model.graph.nodes)
    assert len(repr(s).splitlines()) == 1                  # a notebook does not echo every layer again
    model.summary(print_fn=None)
    assert capsys.readouterr().out == ""


def test_apply_and_apply_fn_take_rng():
    model = archc.load("cifar_resnet_v1")        # no dropout: the key is taken and unused
    v = model.init(0)
    x = np.ones((2, 32, 32, 3), np.float32)
    key = jax.random.PRNGKey(0)
    y1, _ = model.apply(v, x, train=True, rng=key)
    y2, _ = model.apply_fn(v, x, train=True, rng=key)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-6)
    with pytest.warns(DeprecationWarning, match="rngs= is now rng="):
        y3, _ = model.apply_fn(v, x, train=True, rngs=key)
    np.testing.assert_allclose(y3, y2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("apply", ["apply", "apply_fn"])
def test_inputs_the_model_was_not_built_for_say_so(apply):
    """Wrong layout, integer pixels, a size whose flattened features no longer fit the dense
    layer: each a ValueError naming what the model was built for, from apply and apply_fn alike."""
    model = archc.load("cifar_resnet_v1")      # AveragePooling2D(8) then Flatten: the size is fixed
    run = getattr(model, apply)
    v = model.init(0)
    built = r"cifar_resnet_v1 was built for float32 inputs of shape \(batch, 32, 32, 3\) \(NHWC\)"
    with pytest.raises(ValueError, match=built + r".*\(2, 3, 32, 32\); it looks like NCHW"):
        run(v, np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=built + r"; got uint8 values.*archc.predict"):
        run(v, np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=built + r".*height 64 changes the input of head.fc1"):
        run(v, np.zeros((2, 64, 64, 3), np.float32))
    lenet = archc.load("lenet5")
    with pytest.raises(ValueError, match=r"lenet5 was built for .*: height 8 does not go through c3.conv1; "
                                         r"the nearest it accepts: 32"):
        getattr(lenet, apply)(lenet.init(0), np.zeros((2, 8, 32, 1), np.float32))


def test_a_size_the_network_runs_on_is_taken():
    """ResNet-18 ends in a global pool: 64x64 runs with the 224x224 variables, as torchvision's
    does, and gives what the same network built at 64x64 gives."""
    model, small = archc.load("resnet18"), archc.load("resnet18", input_shape=(64, 64, 3))
    v = model.init(0)
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(model.apply(v, x), small.apply(v, x), rtol=1e-5, atol=1e-5)


# ---- 10. rough edges ----------------------------------------------------------------------------
def test_check_takes_several_files(tmp_path):
    bad = tmp_path / "bad.arch"
    bad.write_text("input 32x32x3\nconv3(8) relu\nfc(10, q=1)\n")
    r = no_traceback(run_cli("check", "lenet5", bad, "resnet18"))
    assert r.returncode == 2
    assert [l.split(":")[0] for l in r.stdout.splitlines()] == ["lenet5", "resnet18"]
    assert "bad.arch:3:1: error: 'fc' has no parameter 'q'" in r.stderr
    assert run_cli("check", "lenet5", "resnet18").returncode == 0


def test_counters_after_a_trailing_digit_take_a_separator():
    names = list(archc.load("mobilenet_v2").graph.nodes)
    assert "features.0.inverted1.relu6_1" in names
    assert not [n for n in names if re.search(r"relu6\d", n)]
    assert "layer1.0.relu1" in archc.load("resnet18").graph.nodes       # no digit: unchanged


def test_a_misspelt_keyword_is_named(tmp_path):
    spec = tmp_path / "net.arch"
    spec.write_text("blok basic(c) = conv3(c) relu\ninput 32x32x3\nbasic(8)\n")
    r = no_traceback(run_cli("check", spec))
    assert r.returncode == 2
    assert "net.arch:1:1: error: unknown statement 'blok'" in r.stderr and "did you mean 'block'?" in r.stderr


def test_files_follow_the_umask_and_sizes_read_humanly(tmp_path):
    r = no_traceback(run_cli("build", "lenet5", "--out", "l.safetensors", cwd=tmp_path, umask=0o027))
    assert r.returncode == 0, r.stderr
    r = no_traceback(run_cli("export", "lenet5", "--out", "l.py", cwd=tmp_path, umask=0o027))
    assert r.returncode == 0, r.stderr
    assert re.search(r"\(py, \d+\.\d\d KiB, ", r.stdout), r.stdout       # 5.8 KiB, not 0.0 MiB
    for name in ("l.safetensors", "l.py"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def test_lsp_check_prints_what_an_editor_shows(tmp_path):
    inexact = tmp_path / "inexact.arch"
    inexact.write_text("input 33x33x3\nconv3(8, s=2) relu\ngap fc(10)\n")
    broken = tmp_path / "broken.arch"
    broken.write_text("input 32x32x3\nconv3(8) relu\nfc(10, q=1)\n")
    r = no_traceback(run_cli("lsp", "--check", inexact, cwd=tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"{inexact}:1:7: warning: height 33 is not exact" in r.stdout           # as `archc check` warns
    r = no_traceback(run_cli("lsp", "--check", "broken.arch", cwd=tmp_path))
    assert r.returncode == 2
    assert r.stdout.splitlines()[:2] == ["broken.arch:3:1: error: 'fc' has no parameter 'q'",
                                        "  help: its parameters: n, bias"]


def digits_from_the_docs(where: Path) -> Path:
    """Run docs/training.md's script that makes `digits/` (its block between the markers)."""
    text = (ROOT / "docs" / "training.md").read_text()
    block = text[text.index("<!-- digits:"):text.index("<!-- /digits -->")]
    code = block[block.index("```python\n") + len("```python\n"):block.rindex("```")]
    r = subprocess.run([sys.executable, "-c", code], cwd=where, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return where / "digits"


def test_the_digits_folder_of_the_training_docs(tmp_path):
    from PIL import Image
    digits = digits_from_the_docs(tmp_path)
    for split, count in (("train", 1437), ("val", 360)):
        assert sorted(p.name for p in (digits / split).iterdir()) == [str(d) for d in range(10)]
        files = list((digits / split).glob("*/*.png"))
        assert len(files) == count
    with Image.open(files[0]) as im:
        assert im.size == (32, 32) and im.mode == "L" and im.getextrema()[1] > 200


def test_interrupt_names_the_run_and_a_resumed_run_prints_its_summary(tmp_path):
    data = digits_from_the_docs(tmp_path)
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "archc", "train", "lenet5", "--data", data, "--epochs", "200",
                          "--out", run], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 240
    while not (run / "metrics.json").exists() and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.2)
    assert (run / "metrics.json").exists(), p.communicate()[1] if p.poll() is not None else "no epoch in 240 s"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert f"archc train --resume {run}" in err and "RUN_DIR" not in err
    done = len(json.loads((run / "metrics.json").read_text())["epoch"])
    r = no_traceback(run_cli("train", "--resume", run, "--epochs", done + 1, "--quiet"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].startswith(f"{run}: {done + 1} epochs, train_loss "), r.stdout
