"""The research loop closes: a user's network trained by `archc train`, then `archc predict`
and `archc export` with the run's weights alone (the network, its parameters, the training
preprocessing and the class names come from the weights file)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from train_helpers import SMALL_NET, run_cli, write_shapes

# No preprocess(...) declaration: training normalises to [0, 1] ("unit"), which inference must
# apply too (it used to fall back to ImageNet statistics and a 256/224 resize-crop).
NET = SMALL_NET
KINDS = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    (root / "net.arch").write_text(NET)
    write_shapes(root / "data", kinds=KINDS, per_class=60, seed=0)
    write_shapes(root / "held", kinds=KINDS, per_class=20, seed=7, val_fraction=0)
    r = run_cli(["train", root / "net.arch", "--data", root / "data", "--out", root / "run",
                 "--classes", "3", "--epochs", "8", "--batch", "16", "--optimizer", "adamw", "--quiet"])
    assert r.returncode == 0, r.stderr
    return root


def test_predict_with_the_runs_weights_alone_names_held_out_images(trained_run):
    root = trained_run
    images = sorted((root / "held" / "train").glob("*/*.png"))
    assert len(images) == 60
    r = run_cli(["predict", root / "net.arch", "--weights", root / "run" / "best.safetensors",
                 *images, "--top", "1", "--json"])
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr
    results = json.loads(r.stdout)
    right = sum(e["top"][0]["label"] == e["file"].split("/")[-2] for e in results)
    print(f"held-out accuracy of archc predict: {right}/{len(results)}")
    assert right / len(results) >= 0.9
    # the spec may be left out: the weights record the network's source and parameters
    r2 = run_cli(["predict", "--weights", root / "run" / "best.safetensors", *images[:3], "--top", "1"])
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.splitlines()[1].split()[0] in KINDS          # a name, not an index


def test_the_weights_record_what_inference_needs(trained_run):
    from archc.runtime.predict import read_metadata
    meta = read_metadata(trained_run / "run" / "best.safetensors")
    assert json.loads(meta["archc.classes"]) == list(KINDS)
    assert json.loads(meta["archc.params"]) == {"classes": 3}
    assert json.loads(meta["archc.preprocess"])["mode"] == "unit"
    assert json.loads(meta["archc.preprocess"])["resize"] == "exact"
    assert meta["archc.task"] == "classification"
    assert meta["archc.arch"] == NET


def test_python_predict_uses_the_record_and_matches_the_cli(trained_run):
    import archc
    from archc.runtime.record import graph_for_weights, read_record
    weights = trained_run / "run" / "best.safetensors"
    model = archc.Model(graph_for_weights(None, read_record(weights)))
    img = sorted((trained_run / "held" / "train" / "square").glob("*.png"))[0]
    (res,) = archc.predict(model, weights, [img], top=3)
    assert [t["label"] for t in res["top"]][0] == "square"


def test_export_with_the_runs_weights_alone(trained_run, tmp_path):
    r = run_cli(["export", "--weights", trained_run / "run" / "best.safetensors", "--format", "flax",
                 "--out", tmp_path / "net.py"])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "net.py").is_file()


def test_a_declaration_still_wins_and_the_disagreement_is_named(trained_run, tmp_path):
    (tmp_path / "net.arch").write_text(NET.replace("input 32x32x3\n",
                                                   'input 32x32x3\npreprocess(mode="torch", resize="exact")\n'))
    img = sorted((trained_run / "held" / "train" / "circle").glob("*.png"))[0]
    r = run_cli(["predict", tmp_path / "net.arch", "--weights", trained_run / "run" / "best.safetensors",
                 img, "--param", "classes=3"])
    assert r.returncode == 0, r.stderr
    assert "records preprocessing mode 'unit'" in r.stderr and "declares 'torch'" in r.stderr


def test_weights_that_record_no_network_need_a_spec(tmp_path):
    import archc
    from archc.runtime.variables_io import save_variables
    model = archc.load("lenet5")
    save_variables(model.init(seed=0), tmp_path / "w.safetensors")
    r = run_cli(["predict", "--weights", tmp_path / "w.safetensors", tmp_path / "x.png"])
    assert r.returncode == 2
    assert "does not record its network" in r.stderr and "Traceback" not in r.stderr


def test_one_vocabulary_for_training_and_inference():
    """predict's modes and train's --normalize are one table; the old training names are synonyms."""
    from PIL import Image

    from archc.runtime import pipeline as P
    from archc.runtime.data import AugmentedImage
    from archc.runtime.predict import preprocess_image
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    for name in ("unit", "torch", "imagenet", "tf", "symmetric", "caffe", "none", "raw", "0.1,0.2,0.3/0.5,0.5,2"):
        spec = P.pipeline({**P.parse_normalize(name), "resize": "exact"})
        mean, std, bgr = P.statistics(spec, 3)
        train_eval = AugmentedImage(32, 32, 3, tuple(mean), tuple(std), crop=False, flip=False, bgr=bgr)(im)
        np.testing.assert_array_equal(train_eval, preprocess_image(im, (32, 32, 3), spec), err_msg=name)
    # the reference formulas of each mode
    a = np.asarray(im.resize((32, 32), Image.BILINEAR), np.float32)
    close = lambda mode, ref: np.testing.assert_allclose(                      # noqa: E731
        preprocess_image(im, (32, 32), P.pipeline({"mode": mode, "resize": "exact"})), ref, rtol=1e-5, atol=1e-5)
    close("unit", a / 255)
    close("tf", a / 127.5 - 1)
    close("none", a)
    close("caffe", a[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32))
    close("torch", (a / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))


def test_evaluate_gives_the_runs_validation_metrics(trained_run, tmp_path):
    """`archc evaluate` on the run's validation folder with its best weights: the numbers the
    run recorded for its best epoch, and a confusion matrix that agrees with them."""
    root = trained_run
    r = run_cli(["evaluate", "--weights", root / "run" / "best.safetensors", "--data", root / "data",
                 "--json", "--confusion", tmp_path / "cm.png"])
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    m = json.loads((root / "run" / "metrics.json").read_text())
    best = m["best_epoch"] - 1
    assert got["images"] == 90 and got["classes"] == list(KINDS)
    assert got["loss"] == pytest.approx(m["val_loss"][best], abs=1e-6)
    assert got["accuracy"] == pytest.approx(m["val_accuracy"][best], abs=1e-9)
    assert got["top5"] == pytest.approx(m["val_top5"][best], abs=1e-9)
    cm = np.asarray(got["confusion"])
    assert cm.sum() == 90 and np.trace(cm) / 90 == pytest.approx(got["accuracy"])
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run_cli(["evaluate", "--weights", root / "run" / "best.safetensors", "--data", tmp_path / "nowhere"])
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_a_run_on_fewer_classes_than_outputs_predicts_only_its_classes():
    """`archc train lenet5` on 3 class folders trains 3 of its 10 outputs (the others are never a
    target): predict ranks and names those 3 only, not untrained outputs under their indices."""
    import archc
    from archc.runtime.predict import predict
    model = archc.load("lenet5")
    variables = model.init(0)
    image = np.random.default_rng(0).integers(0, 256, (32, 32), np.uint8)
    meta = {"archc.classes": json.dumps(["cat", "dog", "eel"])}
    (result,) = predict(model, variables, [image], top=5, metadata=meta)
    top = result["top"]
    assert sorted(t["index"] for t in top) == [0, 1, 2]
    assert all(t["label"] == ["cat", "dog", "eel"][t["index"]] for t in top)
    assert [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)
