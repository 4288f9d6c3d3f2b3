"""The seeds' pretrained-model workflow, and preprocessing as a declaration of the network.

The lecture (keras.applications.mobilenet): ``model = MobileNet()``, ``preprocess_input``,
``model.predict``, ``decode_predictions`` -> ``soccer_ball (92.07%)`` … Here the same with
random weights (fixed seed) saved by ``save_weights``: ``archc import`` then ``archc predict
keras/mobilenet --weights mobilenet.safetensors ball.jpg --top 5`` must give Keras's own top 5.
Keras's ``decode_predictions`` downloads its class-index JSON, which this machine cannot: it is
given archc's ImageNet list (the same index order) as its CLASS_INDEX, so the classes (indices),
their order and the probabilities are Keras's, the names archc's.
"""
from __future__ import annotations

import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

import archc
from archc.cli import main
from archc.runtime import predict as P

pytestmark = pytest.mark.usefixtures("highest_precision")


def _ball_image(path, size=(320, 240)):
    """A synthetic photo-like JPEG (not the model's input size, so the resize is exercised)."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(3)
    w, h = size
    base = np.linspace(40, 200, w)[None, :, None] * np.ones((h, 1, 3)) + rng.normal(0, 12, (h, w, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse((100, 50, 240, 190), fill=(245, 245, 245), outline=(10, 10, 10), width=4)
    for x, y in ((150, 90), (190, 120), (140, 150)):
        d.regular_polygon((x, y, 14), 5, fill=(15, 15, 15))
    img.save(path, quality=92)
    return path


def _run(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_seed_workflow_keras_mobilenet(tmp_path, capsys, monkeypatch):
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    from keras.applications import mobilenet
    from keras.src.applications import imagenet_utils        # where decode_predictions keeps CLASS_INDEX

    keras.utils.set_random_seed(0)
    model = mobilenet.MobileNet(weights=None)                 # 224x224x3, alpha 1.0, as the seed
    # logits spread as a trained classifier's (default init gives a near-uniform softmax)
    ball = _ball_image(tmp_path / "ball.jpg")
    x = keras.utils.img_to_array(keras.utils.load_img(ball, target_size=(224, 224)))[None]
    preds_layer = model.get_layer("conv_preds")
    logits = keras.Model(model.inputs, model.layers[-1].input)(mobilenet.preprocess_input(x.copy()))
    k, b = [np.asarray(keras.ops.convert_to_numpy(w)) for w in preds_layer.weights]
    s = 4.0 / float(np.asarray(keras.ops.convert_to_numpy(logits)).std())
    preds_layer.set_weights([k * s, b * s])
    ckpt = tmp_path / "mobilenet.weights.h5"
    model.save_weights(str(ckpt))

    # Keras, as the lecture does it
    pred = np.asarray(model.predict(mobilenet.preprocess_input(x.copy()), verbose=0))
    classes = P.imagenet_classes()
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", {str(i): (f"n{i:08d}", name) for i, name in enumerate(classes)})
    want = imagenet_utils.decode_predictions(pred, top=5)[0]
    want_idx = [int(wnid[1:]) for wnid, _, _ in want]
    # the top 5 is well separated (not decided by float noise)
    order = np.sort(pred[0])[::-1]
    assert np.min(order[:5] - order[1:6]) > 1e-4 and order[0] > 0.05

    # archc, as the seeds' command line
    weights = tmp_path / "mobilenet.safetensors"
    _run(capsys, "import", "keras/mobilenet", ckpt, "--from", "keras", "--out", weights)
    text = _run(capsys, "predict", "keras/mobilenet", "--weights", weights, ball, "--top", "5")
    assert text.splitlines() == [str(ball)] + [f"  {name} ({p:.2%})" for _, name, p in want]
    got = json.loads(_run(capsys, "predict", "keras/mobilenet", "--weights", weights, ball, "--top", "5",
                          "--json"))[0]["top"]
    assert [t["index"] for t in got] == want_idx
    np.testing.assert_allclose([t["prob"] for t in got], [p for _, _, p in want], atol=1e-5, rtol=0)

    # the Python path with variables imported in memory: the declaration, not a recorded mode
    net = archc.load("keras/mobilenet")
    variables, report = archc.import_weights(net, ckpt)
    got = archc.predict(net, variables, [ball], top=5)[0]["top"]
    assert [t["index"] for t in got] == want_idx
    np.testing.assert_allclose([t["prob"] for t in got], [p for _, _, p in want], atol=1e-5, rtol=0)

    # model.summary() with Keras's layer names beside archc's (the seed's model.summary())
    layers = {l["name"]: l for l in net.summary(names=report)["layers"]}
    assert layers["conv1.conv1"]["source_name"] == "conv1" and layers["blocks.0.dwconv1"]["source_name"] == "conv_dw_1"
    assert layers["blocks.12.bn2"]["source_name"] == "conv_pw_13_bn" and layers["head.conv1"]["source_name"] == "conv_preds"
    assert {l["source_name"] for l in layers.values() if "source_name" in l} == {l.name for l in model.layers if l.weights}


NET = """\
param prep = "caffe"
input 16x16x3
feat: conv3(4) relu
gap fc(1000)
preprocess(mode=prep, resize="exact")
"""


def test_predict_uses_the_declaration_whatever_the_variables(tmp_path):
    """In memory, from init, from a file: the declared pipeline; a file recording another mode
    is reported and the declaration wins; ``preprocess=`` overrides; a network without a
    declaration uses the recorded mode."""
    (tmp_path / "net.arch").write_text(NET)
    (tmp_path / "plain.arch").write_text(NET.replace('preprocess(mode=prep, resize="exact")\n', ""))
    net = archc.load(str(tmp_path / "net.arch"))
    variables = net.init(seed=1)
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)

    def probs(x):
        y = np.asarray(net.apply(variables, x[None]), np.float64)[0]
        e = np.exp(y - y.max())
        return e / e.sum()

    caffe = probs(P.preprocess_image(img, (16, 16), P.preprocess_spec("caffe")))
    torch = probs(P.preprocess_image(img, (16, 16), P.preprocess_spec("torch")))
    assert not np.allclose(caffe, torch, atol=1e-6)            # the modes are told apart

    def top(r):
        return [t["prob"] for t in r[0]["top"]]

    np.testing.assert_allclose(top(archc.predict(net, variables, [img], top=3)), np.sort(caffe)[::-1][:3], rtol=1e-5)
    np.testing.assert_allclose(top(archc.predict(net, variables, [img], top=3, preprocess="torch")),
                               np.sort(torch)[::-1][:3], rtol=1e-5)
    file = tmp_path / "w.safetensors"
    archc.save_variables(variables, file, metadata={"archc.preprocess": json.dumps({"mode": "torch"})})
    with pytest.warns(P.PreprocessWarning, match="records preprocessing mode 'torch' but .* declares 'caffe'"):
        r = archc.predict(net, file, [img], top=3)
    np.testing.assert_allclose(top(r), np.sort(caffe)[::-1][:3], rtol=1e-5)
    plain = archc.load(str(tmp_path / "plain.arch"))
    np.testing.assert_allclose(top(archc.predict(plain, file, [img], top=3)), np.sort(torch)[::-1][:3], rtol=1e-5)


def test_cli_reports_a_disagreeing_recorded_mode(tmp_path, capsys):
    (tmp_path / "net.arch").write_text(NET)
    net = archc.load(str(tmp_path / "net.arch"))
    file, img = tmp_path / "w.safetensors", tmp_path / "x.png"
    archc.save_variables(net.init(seed=1), file, metadata={"archc.preprocess": json.dumps({"mode": "tf"})})
    from PIL import Image
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img)
    assert main(["predict", str(tmp_path / "net.arch"), "--weights", str(file), str(img)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: the weights file records preprocessing mode 'tf'") and "Traceback" not in err


def test_every_variant_with_a_weight_mapping_declares_its_pipeline():
    """Each built-in a shipped mapping serves states its input pipeline (one place: its .arch)."""
    from archc.compiler.build import build_graph
    from archc.runtime.weights import MAPPINGS, load_rules
    missing = []
    for path in sorted(MAPPINGS.glob("*.toml")):
        rules = load_rules(path)
        for name in rules.models:
            declared = build_graph(name).declarations
            if "detect_input" in declared:      # a detector: its input transform is detect_input(...)
                continue
            decl = declared.get("preprocess")
            if decl is None:
                missing.append(name)
            elif rules.source == "keras":
                # Keras: load_img(target_size=…) and the application's preprocess_input
                assert (decl.resize, decl.interpolation) == ("exact", "nearest"), name
    assert not missing, f"no preprocess(...) declaration: {missing}"


def test_a_rules_file_with_a_preprocess_table_is_refused(tmp_path):
    from archc.runtime.weights import WeightsError, load_rules
    p = tmp_path / "r.toml"
    p.write_text('source = "keras"\n[preprocess]\ndefault = { mode = "tf" }\n')
    with pytest.raises(WeightsError, match=r"has no \[preprocess\] table: the network's .arch file declares"):
        load_rules(p)


def test_train_normalises_as_the_network_declares(tmp_path):
    """`archc train` takes its normalisation from the declaration (fresh, imported or archc
    variables alike); a network without one keeps the weights file's (or unit)."""
    from archc.runtime.train import declared_normalization
    (tmp_path / "net.arch").write_text(NET)
    (tmp_path / "plain.arch").write_text(NET.replace('preprocess(mode=prep, resize="exact")\n', ""))
    mode = lambda m: (declared_normalization(m) or {}).get("mode")      # noqa: E731
    assert mode(archc.load(str(tmp_path / "net.arch"))) == "caffe"
    assert mode(archc.load(str(tmp_path / "net.arch"), prep='"tf"')) == "tf"
    assert declared_normalization(archc.load(str(tmp_path / "plain.arch"))) is None
    assert mode(archc.load("keras/resnet50", input_shape=(32, 32, 3))) == "caffe"
    assert mode(archc.load("keras/efficientnet_b0", input_shape=(32, 32, 3))) == "none"
