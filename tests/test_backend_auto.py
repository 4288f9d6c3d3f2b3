"""`--backend auto`: CPU inference through the faster of XLA and ONNX Runtime, measured once per
machine, network and batch and cached (archc/runtime/backend_choice.py); what the commands print;
ONNX Runtime's outputs against XLA's; an ONNX export that fails falls back to XLA with a note."""
from __future__ import annotations

import json

import numpy as np
import pytest

import archc
from archc.cli import main
from archc.runtime import backend_choice as B

pytestmark = pytest.mark.usefixtures("highest_precision")

NET = """\
input 16x16x3
a: conv3(8) bn relu
b: conv3(8, s=2) bn relu
gap fc(10)
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / B.CACHE_FILE


@pytest.fixture
def net(tmp_path):
    spec = tmp_path / "net.arch"
    spec.write_text(NET)
    model = archc.load(str(spec))
    variables = model.init(seed=1)
    weights = tmp_path / "w.safetensors"
    archc.save_variables(variables, weights)
    from PIL import Image
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        images.append(tmp_path / f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images[-1])
    return {"spec": spec, "model": model, "variables": variables, "weights": weights, "images": images}


def test_the_choice_is_measured_once_then_read_from_the_cache(net, cache, monkeypatch):
    model, variables = net["model"], net["variables"]
    first = B.choose(model, variables, 2)
    assert first.engine in B.ENGINES and not first.cached
    assert set(first.images_per_s) == set(B.ENGINES) and all(v > 0 for v in first.images_per_s.values())
    assert first.engine == max(first.images_per_s, key=first.images_per_s.get)
    entry = json.loads(cache.read_text())[B.cache_key(model, 2)]
    assert entry["engine"] == first.engine and entry["images_per_s"] == first.images_per_s

    def no_measuring(*a, **k):
        raise AssertionError("measured again")
    monkeypatch.setattr(B, "measure", no_measuring)
    second = B.choose(model, variables, 2)
    assert second.cached and second.engine == first.engine and second.images_per_s == first.images_per_s
    assert "cached" in second.line() and second.line().startswith(f"backend: {first.engine} (")
    # another batch is another entry: measured (here: refused by the patch)
    with pytest.raises(AssertionError, match="measured again"):
        B.choose(model, variables, 3)


def test_the_key_names_the_machine_network_batch_and_versions(net):
    key = B.cache_key(net["model"], 4)
    for part in (B.cpu_model(), net["model"].name, "batch 4", "float32", "archc ", "jax ", "onnxruntime "):
        assert part in key
    other = archc.load(str(net["spec"]), input_shape=(32, 32, 3))         # same name, another network
    assert B.cache_key(other, 4) != key


def test_onnxruntime_gives_xlas_outputs(net, cache):
    """The engine auto may pick: ONNX Runtime's outputs within 1e-5 of XLA's, through the same
    AutoModel that predict and segment call."""
    model, variables = net["model"], net["variables"]
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({B.cache_key(model, 4): {"engine": "onnxruntime", "images_per_s": {}, "batch": 4}}))
    auto = B.AutoModel(model)
    x = np.random.default_rng(5).uniform(0, 1, (4, 16, 16, 3)).astype(np.float32)
    y = auto.apply(variables, x)
    assert auto.choice.engine == "onnxruntime" and isinstance(y, np.ndarray)      # ORT ran, not XLA
    ref = np.asarray(model.apply(variables, x))
    assert np.abs(ref).max() > 1e-2
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)


def test_predict_prints_the_choice_and_a_second_run_reads_it(net, cache, capsys):
    args = ["predict", str(net["spec"]), "--weights", str(net["weights"]), *map(str, net["images"]), "--json"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    first = json.loads(out)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("backend: ") and "img/s" in lines[0] and "cached" not in lines[0]
    engine = lines[0].split()[1]
    assert engine in B.ENGINES
    assert json.loads(cache.read_text())[B.cache_key(net["model"], 3)]["engine"] == engine
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert err.strip() == lines[0].rstrip(")") + f"; measured earlier, cached in {cache})"
    second = json.loads(out)
    # the same classes and probabilities whichever engine ran, and as --backend xla gives
    assert main(args + ["--backend", "xla"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for got in (first, second):
        for a, b in zip(got, json.loads(out)):
            assert [t["index"] for t in a["top"]] == [t["index"] for t in b["top"]]
            np.testing.assert_allclose([t["prob"] for t in a["top"]], [t["prob"] for t in b["top"]], atol=1e-6)


def test_a_failing_export_falls_back_to_xla_with_one_line(net, cache, capsys, monkeypatch):
    from archc.compiler import onnx
    from archc.compiler.onnx import ExportError

    def refuse(*a, **k):
        raise ExportError("op 'mystery' has no ONNX rule (node 'a')")
    monkeypatch.setattr(onnx, "to_onnx", refuse)
    args = ["predict", str(net["spec"]), "--weights", str(net["weights"]), str(net["images"][0])]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert err == "backend: xla (the ONNX export failed, so XLA runs it: op 'mystery' has no ONNX rule (node 'a'))\n"
    assert "Traceback" not in out + err and out.startswith(str(net["images"][0]))
    # cached as XLA: the next run says so without trying the export again
    assert main(args) == 0
    assert capsys.readouterr().err.startswith("backend: xla (the ONNX export failed")


def test_bench_auto_runs_the_chosen_engine(net, cache, capsys):
    assert main(["bench", str(net["spec"]), "--backend", "auto", "--batch", "2", "--iters", "1", "--repeats", "1",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["choice"]["engine"] == result["backend"] in B.ENGINES and result["images_per_s"] > 0
    assert main(["bench", str(net["spec"]), "--backend", "auto", "--batch", "2", "--iters", "1", "--repeats", "1"]) == 0
    first_line = capsys.readouterr().out.splitlines()[0]
    assert first_line.startswith(f"backend: {result['backend']} (") and "cached" in first_line


def test_xla_alone_where_onnxruntime_would_differ(net, cache):
    """A bfloat16 policy and named outputs run on XLA without measuring anything."""
    model, variables = net["model"], net["variables"]
    c = B.choose(model, variables, 2, dtype="bfloat16")
    assert c.engine == "xla" and not c.images_per_s and "bfloat16" in c.line()
    auto = B.AutoModel(model)
    x = np.zeros((2, 16, 16, 3), np.float32)
    out = auto.apply(variables, x, outputs=("a",))
    assert auto.choice.engine == "xla" and out["a"].shape == (2, 16, 16, 8) and not cache.exists()


def test_segment_prints_the_choice_and_gives_xlas_masks(tmp_path, cache, capsys):
    """At the network's input size (--size input) segment's calls are the ones auto may route to
    ONNX Runtime; the mask equals XLA's (--backend xla)."""
    spec = tmp_path / "seg.arch"
    spec.write_text("input 16x16x3\na: conv3(8) bn relu\nconv1(3)\n")
    model = archc.load(str(spec))
    weights = tmp_path / "seg.safetensors"
    archc.save_variables(model.init(seed=2), weights)
    from PIL import Image
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(photo)
    args = ["segment", str(spec), "--weights", str(weights), str(photo), "--size", "input", "--json"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and err.split()[:2] in (["backend:", "xla"], ["backend:", "onnxruntime"])
    assert "img/s" in err, err                     # measured, not ruled out
    auto = json.loads(out)
    assert main(args + ["--backend", "xla"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out) == auto
