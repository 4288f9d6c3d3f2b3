"""Training: end to end through ``archc train`` (LeNet-5 on scikit-learn's digits, transfer
learning with a frozen backbone, divergence, user errors) and the pieces (data, patterns,
schedules, accumulation, per-group learning rates, bf16, remat, feature extraction)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from train_helpers import OTHER_SHAPES, write_digits, write_random, write_shapes

from archc.cli import main
from archc.compiler.build import build_graph
from archc.runtime import data as D
from archc.runtime import train as T
from archc.runtime.model import Model
from archc.runtime.run_state import read_latest


def quiet(_msg):
    pass


def cli(*args) -> int:
    return main(["train", *map(str, args)])


def load_flat(path) -> dict:
    from safetensors.numpy import load_file
    return load_file(str(path))


def metadata(path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), "numpy") as f:
        return f.metadata()


# --------------------------------------------------------------------------------------------
# End to end: the acceptance figures
# --------------------------------------------------------------------------------------------
def test_lenet5_digits_cli(tmp_path, capsys):
    """LeNet-5 on sklearn's digits (32x32 image folder, fixed 75/25 split), every option but the
    epochs left at its default (SGD, the augmentation chosen for 32x32 grey images): >= 97%
    validation accuracy. (ImageNet's augmentation, the default before, reached 89.8%.)"""
    data = write_digits(tmp_path / "digits", val_fraction=0.25)
    run = tmp_path / "run"
    rc = cli("lenet5", "--data", data, "--epochs", 20, "--out", run)
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "augmentation: random-resized crop to 0.8-1 of the area, no flip" in err
    m = json.loads((run / "metrics.json").read_text())
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert len(m[key]) == 20 and all(np.isfinite(m[key]))
    print(f"lenet5/digits val_accuracy per epoch: {m['val_accuracy']}", file=sys.stderr)
    assert m["val_accuracy"][-1] >= 0.97
    assert m["train_loss"][-1] < m["train_loss"][0]
    assert "epoch 20/20" in err and "img/s" in err
    for name in ("best.safetensors", "last.safetensors", "config.json", "curves.png"):
        assert (run / name).is_file(), name
    assert read_latest(run)[2] == {"epoch": 20, "batch": 0}      # orbax's resume point: the end
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
    # the last checkpoint is an ordinary archc variables file and reproduces val accuracy
    import archc
    variables = archc.load_variables(run / "last.safetensors")
    assert set(variables) == {"params"}
    assert metadata(run / "last.safetensors")["epoch"] == "20"
    assert json.loads(metadata(run / "best.safetensors")["classes"]) == [str(i) for i in range(10)]
    model = archc.load("lenet5")
    val = D.ImageFolder.scan(data / "val", classes=[str(i) for i in range(10)])
    pre = D.AugmentedImage(32, 32, 1, crop=False, flip=False)
    x = np.stack([pre(val.read(i)) for i in range(len(val))])
    acc = float(np.mean(np.asarray(model.apply(variables, x)).argmax(-1) == val.labels))
    assert acc == pytest.approx(m["val_accuracy"][-1], abs=1e-9)


def test_transfer_frozen_backbone(tmp_path, capsys):
    """A built-in network trained on one synthetic task (4 shapes: ring, diamond, bars) and
    saved, then given a new 5-way head and fine-tuned on another (circle, square, triangle,
    cross, stripes) with everything but the head frozen: >= 95% val accuracy, and only the
    head's tensors differ from the saved ones."""
    pre_data = write_shapes(tmp_path / "pre_data", kinds=OTHER_SHAPES, per_class=40, seed=10,
                            jitter=3)
    ft_data = write_shapes(tmp_path / "ft_data", per_class=80, seed=1, jitter=2)
    pre_run, ft_run = tmp_path / "pre", tmp_path / "ft"
    assert cli("cifar_resnet_v1", "--data", pre_data, "--param", "classes=4", "--epochs", 5,
               "--optimizer", "adamw", "--lr", 1e-3, "--no-augment", "--out", pre_run,
               "--quiet") == 0, capsys.readouterr().err
    pretrained = pre_run / "last.safetensors"
    rc = cli("cifar_resnet_v1", "--data", ft_data, "--classes", 5, "--weights", pretrained,
             "--freeze-all-but-head", "--epochs", 8, "--optimizer", "adamw", "--lr", 3e-4,
             "--no-augment", "--out", ft_run)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "head.fc1/kernel" in err and "batch norm frozen" in err
    m = json.loads((ft_run / "metrics.json").read_text())
    print(f"transfer val_accuracy per epoch: {m['val_accuracy']}", file=sys.stderr)
    assert m["val_accuracy"][-1] >= 0.95
    before, after = load_flat(pretrained), load_flat(ft_run / "last.safetensors")
    head = {"params/head.fc1/kernel", "params/head.fc1/bias"}
    assert set(before) == set(after)
    for key in before:
        if key in head:
            assert after[key].shape != before[key].shape        # 4 -> 5 classes
        else:
            assert after[key].dtype == before[key].dtype
            assert after[key].tobytes() == before[key].tobytes(), key
    assert after["params/head.fc1/kernel"].shape == (32 * 32 * 32, 5)


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    data = write_random(tmp_path / "d", classes=3, per_class=16)
    run = tmp_path / "run"
    # epoch 1 at lr 0.01; from epoch 2 the step schedule multiplies it by 1e300 (inf in float32)
    rc = cli("lenet5", "--data", data, "--epochs", 3, "--batch", 8, "--schedule", "step",
             "--step-epochs", 1, "--gamma", 1e300, "--no-augment", "--out", run, "--quiet")
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "Traceback" not in err
    assert "at step" in err and "(epoch 2" in err and "last.safetensors (epoch 1)" in err
    assert metadata(run / "last.safetensors")["epoch"] == "1"
    assert read_latest(run)[2] == {"epoch": 1, "batch": 0}        # the resume point: epoch 1's end
    assert all(np.isfinite(v).all() for v in load_flat(run / "last.safetensors").values())
    assert len(json.loads((run / "metrics.json").read_text())["epoch"]) == 1


def test_extract_features(tmp_path, capsys):
    data = write_random(tmp_path / "d", classes=2, per_class=6, mode="RGB", layout="split")
    out = tmp_path / "feats"
    rc = cli("cifar_resnet_v1", "--data", data, "--extract-features", "--batch", 4, "--out", out)
    assert rc == 0, capsys.readouterr().err
    f = np.load(out / "train_features.npy")
    assert f.shape == (12, 32)                         # block2 (32x32x32), average-pooled
    assert np.load(out / "train_labels.npy").tolist() == [0] * 6 + [1] * 6
    assert np.load(out / "val_features.npy").shape == (6, 32)
    assert json.loads((out / "features.json").read_text())["node"] == "block2.relu2"


# --------------------------------------------------------------------------------------------
# User errors: readable message, exit status 2, no traceback
# --------------------------------------------------------------------------------------------
def _user_error(capsys, *args, expect: str):
    rc = cli(*args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "error: " in err, err
    assert expect in err, err


def test_user_errors(tmp_path, capsys):
    ok = write_random(tmp_path / "ok", classes=2, per_class=4)
    _user_error(capsys, "lenet5", "--data", tmp_path / "missing", "--out", tmp_path / "r",
                expect="does not exist")
    (tmp_path / "noclass").mkdir()
    _user_error(capsys, "lenet5", "--data", tmp_path / "noclass", "--out", tmp_path / "r",
                expect="no class folders")
    empty = write_random(tmp_path / "empty", classes=2, per_class=4)
    for f in (empty / "class1").iterdir():
        f.unlink()
    _user_error(capsys, "lenet5", "--data", empty, "--out", tmp_path / "r",
                expect="class folder")
    bad = write_random(tmp_path / "bad", classes=2, per_class=4)
    (bad / "class0" / "broken.png").write_bytes(b"not a png at all")
    _user_error(capsys, "lenet5", "--data", bad, "--val-split", 0, "--batch", 9, "--out",
                tmp_path / "r", expect="broken.png")        # named before training (--on-bad-data)
    _user_error(capsys, "lenet5", "--data", ok, "--freeze", "layer9.*", "--out", tmp_path / "r",
                expect="matches no layer")
    _user_error(capsys, "--resume", tmp_path / "nowhere", expect="not a training run")
    _user_error(capsys, "lenet5", "--data", ok, "--weights", tmp_path / "none.safetensors",
                "--out", tmp_path / "r", expect="does not exist")
    _user_error(capsys, "lenet5", "--data", ok, "--batch", 64, "--out", tmp_path / "r",
                expect="fewer than one batch")
    _user_error(capsys, "lenet5", "--data", ok, "--normalize", "zebra", "--out", tmp_path / "r",
                expect="--normalize")


def test_classes_mismatch_and_spec_errors(tmp_path, capsys):
    ok = write_random(tmp_path / "ok", classes=12, per_class=2)
    rc = cli("lenet5", "--data", ok, "--val-split", 0, "--batch", 4, "--out", tmp_path / "r")
    err = capsys.readouterr().err
    assert rc == 2 and "12 classes" in err and "Traceback" not in err
    rc = cli("lenet5", "--data", ok, "--classes", 12, "--out", tmp_path / "r")
    err = capsys.readouterr().err
    assert rc == 2 and "no parameter 'classes'" in err and "Traceback" not in err


def test_existing_run_needs_resume(tmp_path, capsys):
    data = write_random(tmp_path / "d", classes=2, per_class=8)
    run = tmp_path / "run"
    assert cli("lenet5", "--data", data, "--epochs", 1, "--batch", 4, "--out", run, "--quiet") == 0
    _user_error(capsys, "lenet5", "--data", data, "--out", run, expect="--resume")
    # resuming a finished run is a no-op that succeeds
    assert cli("--resume", run) == 0
    _user_error(capsys, "--resume", run, "--lr", 0.1, expect="only --epochs")
    # a run of an archc before orbax's checkpoints: refused, not restarted over its weights
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text((run / "config.json").read_text())
    (old / "train_state.safetensors").write_bytes(b"")
    _user_error(capsys, "--resume", old, expect="written by an earlier archc")
    assert not (old / "last.safetensors").exists()


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def test_find_splits_layouts(tmp_path):
    flat = write_random(tmp_path / "flat", classes=3, per_class=10)
    train, val = D.find_splits(flat)                     # default 20% held out, per class
    assert len(train) == 24 and len(val) == 6
    assert sorted(np.bincount(val.labels).tolist()) == [2, 2, 2]
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    assert D.find_splits(flat, seed=0)[1].samples == val.samples      # deterministic
    assert D.find_splits(flat, val_split=0)[1] is None
    split = write_random(tmp_path / "split", classes=2, per_class=6, layout="split")
    train, val = D.find_splits(split)
    assert train.classes == ["class0", "class1"] and len(val) == 6
    (split / "val" / "class9").mkdir()
    with pytest.raises(D.DataError, match="training set lacks"):
        D.find_splits(split)


def test_loader_deterministic_order_and_augmentation(tmp_path):
    data = D.ImageFolder.scan(write_random(tmp_path / "d", classes=2, per_class=10, mode="RGB"))
    pre = D.ImageAndLabel(D.AugmentedImage(24, 24, 3, crop_scale=(0.3, 1.0)))

    def epoch(loader, e):
        return [(b["image"].copy(), b["label"].copy()) for b in loader.epoch(e)]

    a = D.Loader(data, pre, 4, train=True, seed=5, prefetch=0)
    b = D.Loader(data, pre, 4, train=True, seed=5, prefetch=3, workers=3)
    for e in (0, 1):
        ea, eb = epoch(a, e), epoch(b, e)
        assert len(ea) == 5
        for (xa, ya), (xb, yb) in zip(ea, eb):
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(epoch(a, 0)[0][0], epoch(a, 1)[0][0])   # new order/crops per epoch
    rest = list(a.epoch(1, start=2))                                    # resuming inside an epoch
    assert len(rest) == 3 and np.array_equal(rest[0]["image"], epoch(a, 1)[2][0])
    it = b.iterator(1)                 # grain's checkpointable iterator, reading ahead on threads:
    next(it), next(it)                 # its state is what was consumed, not what was read
    restored = list(a.iterator(1, it.get_state()))
    assert len(restored) == 3 and all(np.array_equal(r["image"], q["image"]) for r, q in zip(restored, rest))
    # evaluation: in order, last batch padded and masked
    ev = list(D.Loader(data, pre, 8, train=False).epoch(0))
    assert [b["weight"].sum() for b in ev] == [8, 8, 4]
    # a shard is its slice of the global batch
    s1 = list(D.Loader(data, pre, 4, train=True, seed=5, shard=(1, 2), prefetch=0).epoch(0))
    assert np.array_equal(s1[0]["image"], epoch(a, 0)[0][0][2:])


def test_augmentation_follows_the_input_size():
    """auto: the smallest crop keeps ~64 px a side (ImageNet's 8% at 224 px, at most 80% on
    small inputs), a flip only for colour inputs of 128 px or more; ImageNet's recipe is one
    flag; explicit --crop-scale/--flip win; the choice is saved for --resume."""
    auto = lambda h, c=3, **kw: D.choose_augmentation("auto", h, h, c, **kw)  # noqa: E731
    assert (auto(32, 1).crop_scale, auto(32, 1).flip) == ((0.8, 1.0), False)
    assert (auto(64).crop_scale, auto(64).flip) == ((0.8, 1.0), False)
    assert (auto(128).crop_scale, auto(128).flip) == ((0.25, 1.0), True)
    assert (auto(128, 1).flip, auto(224).crop_scale, auto(512).crop_scale) == (False, (0.08, 1.0), (0.08, 1.0))
    net = D.choose_augmentation("imagenet", 32, 32, 1)
    assert (net.crop_scale, net.flip) == ((0.08, 1.0), True)
    none = D.choose_augmentation("none", 224, 224, 3)
    assert (none.crop_scale, none.flip) == (None, False)
    mine = auto(32, 1, crop_scale=[0.5, 1], flip=True)
    assert (mine.crop_scale, mine.flip) == ((0.5, 1.0), True)
    assert "--crop-scale 0.5,1 --flip given" in mine.describe()
    with pytest.raises(D.DataError, match="augmentation must be one of"):
        D.choose_augmentation("heavy", 32, 32, 1)
    # the trainer records its choice (config.json) and applies it; augment=False still works
    x, y = np.zeros((8, 32, 32, 1), np.uint8), np.arange(8) % 2
    t = T.Trainer(T.TrainConfig(spec="lenet5", batch=4, augment="imagenet"), train_data=(x, y), log=quiet)
    assert (t.cfg.crop_scale, t.cfg.flip) == ([0.08, 1.0], True)
    assert (t.pre_train.image.crop, t.pre_train.image.flip, t.pre_train.image.crop_scale) == (True, True, (0.08, 1.0))
    t = T.Trainer(T.TrainConfig(spec="lenet5", batch=4, augment=False), train_data=(x, y), log=quiet)
    assert (t.cfg.augment, t.pre_train.image.crop, t.pre_train.image.flip) == ("none", False, False)


def test_preprocess_normalisation_and_modes():
    from PIL import Image
    pre = D.AugmentedImage(4, 4, 3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop=False, flip=False)
    x = pre(Image.new("L", (8, 8), 255))               # grey -> RGB, resized, [-1, 1]
    assert x.shape == (4, 4, 3) and np.allclose(x, 1.0)
    from archc.runtime import pipeline as P
    mean, std, bgr = P.statistics(P.parse_normalize("imagenet"), 1)      # the old name of torch
    assert mean.shape == (1,) and np.isclose(mean[0], np.mean([0.485, 0.456, 0.406])) and not bgr
    mean, std, _ = P.statistics(P.parse_normalize("0.1,0.2,0.3/1,2,3"), 3)
    assert std.tolist() == [1, 2, 3]
    with pytest.raises(P.PipelineError):
        P.statistics(P.parse_normalize("0.1,0.2/1,1"), 3)


# --------------------------------------------------------------------------------------------
# Graph helpers and patterns
# --------------------------------------------------------------------------------------------
def test_logits_head_and_feature_nodes():
    m = Model(build_graph("lenet5"))
    assert T.logits_node(m.graph) == "out.fc1" and T.head_nodes(m) == ["out.fc1"]
    m = Model(build_graph("cifar_resnet_v1"))
    assert T.head_nodes(m) == ["head.fc1"] and T.feature_node(m) == "block2.relu2"
    m = Model(build_graph("resnet18"))
    assert T.logits_node(m.graph) == "head.fc1" and T.feature_node(m) == "head.gap1"
    m = Model(build_graph("squeezenet1_1"))
    assert [m.graph.nodes[n].op for n in T.head_nodes(m)] == ["conv"]


def test_l2norm_has_weights():
    """An l2norm's learned scale makes it a layer with weights: freezable, and a head."""
    ssd = Model(build_graph("ssd300_vgg16"))
    assert "conv4_3_norm.l2norm1" in T.param_nodes(ssd)
    m = Model(build_graph(text="input 8x8x3\nconv3(4) relu gap fc(4) l2norm(init=1)"))
    assert [m.graph.nodes[n].op for n in T.head_nodes(m)] == ["l2norm"]


def test_select_patterns():
    names = ["stem.conv1", "layer1.0.conv1", "layer1.0.bn1", "layer2.0.conv1", "head.fc1"]
    assert T.select(["layer1.*"], names) == {"layer1.0.conv1", "layer1.0.bn1"}
    assert T.select(["layer1"], names) == {"layer1.0.conv1", "layer1.0.bn1"}
    assert T.select(["!head.*"], names) == set(names) - {"head.fc1"}
    assert T.select(["stem,layer2"], names) == {"stem.conv1", "layer2.0.conv1"}
    assert T.select(["*.bn?"], names) == {"layer1.0.bn1"}
    with pytest.raises(T.TrainError, match="did you mean 'layer1'"):
        T.select(["layer1x"], names)
    with pytest.raises(T.TrainError, match="negates nothing"):
        T.select(["!"], names)


def test_schedules():
    cfg = T.TrainConfig(lr=0.1, epochs=10, schedule="cosine", warmup_epochs=1)
    s = T.make_schedule(cfg, steps_per_epoch=10)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.05)
    assert float(s(10)) == pytest.approx(0.1) and float(s(100)) == pytest.approx(0.0, abs=1e-7)
    cfg = T.TrainConfig(lr=0.1, epochs=10, schedule="step", step_epochs=3, gamma=0.5)
    s = T.make_schedule(cfg, steps_per_epoch=10)
    assert [round(float(s(e * 10)), 6) for e in (0, 2, 3, 6)] == [0.1, 0.1, 0.05, 0.025]
    cfg = T.TrainConfig(lr=0.1, epochs=10, schedule="step", milestones=[2, 5], gamma=0.1)
    s = T.make_schedule(cfg, steps_per_epoch=10)
    assert [round(float(s(e * 10)), 6) for e in (1, 2, 5)] == [0.1, 0.01, 0.001]


def test_transfer_report():
    fresh = {"params": {"a": {"kernel": np.zeros((2, 3), np.float32)},
                        "head": {"kernel": np.zeros((3, 5), np.float32)}}}
    loaded = {"params": {"a": {"kernel": np.ones((2, 3), np.float32)},
                         "head": {"kernel": np.ones((3, 4), np.float32)},
                         "old": {"bias": np.ones(2, np.float32)}}}
    out, report = T.transfer(fresh, loaded)
    assert out["params"]["a"]["kernel"].sum() == 6 and out["params"]["head"]["kernel"].sum() == 0
    assert report["loaded"] == 1 and report["shape_mismatch"] == ["head/kernel (3, 4) -> (3, 5)"]
    assert report["unused"] == ["params/old/bias"]
    out, report = T.transfer(fresh, {"params": {"head": {"kernel": np.ones((3, 5))}}}, {"head"})
    assert out["params"]["head"]["kernel"].sum() == 0 and report["reinitialised"] == ["head/kernel"]


# --------------------------------------------------------------------------------------------
# The loop's options, through the Python API on in-memory data
# --------------------------------------------------------------------------------------------
def _arrays(n=32, classes=4, seed=0, size=32, channels=1):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = np.clip(rng.normal(60 + 40 * y[:, None, None, None], 30, (n, size, size, channels)), 0, 255)
    return x.astype(np.uint8), y


def _fit(spec="lenet5", **kw):
    x, y = _arrays()
    opts = dict(epochs=1, batch=16, augment=False, progress=False, lr=0.05)
    opts.update(kw)
    return T.train(spec, train_data=(x, y), log=quiet, **opts)


def test_gradient_accumulation_matches_large_batch():
    big = _fit(batch=16, optimizer="sgd")
    acc = _fit(batch=8, accumulate=2, optimizer="sgd")
    for node, leaves in big.variables["params"].items():
        for k, v in leaves.items():
            np.testing.assert_allclose(acc.variables["params"][node][k], v, atol=2e-6, err_msg=node)


def test_lr_mult_zero_keeps_layer_and_weight_decay_adamw():
    import archc
    init = archc.load("lenet5").init(seed=0)
    r = _fit(optimizer="adamw", lr_mult={"c1": 0.0, "out": 10.0}, weight_decay=0.1, epochs=2)
    p = r.variables["params"]
    assert np.asarray(p["c1.conv1"]["kernel"]).tobytes() == np.asarray(init["params"]["c1.conv1"]["kernel"]).tobytes()
    assert not np.array_equal(p["c3.conv1"]["kernel"], init["params"]["c3.conv1"]["kernel"])


def test_freeze_pattern_and_label_smoothing():
    import archc
    init = archc.load("lenet5").init(seed=0)
    r = _fit(freeze=["c1,c3", "c5.*"], label_smoothing=0.1, optimizer="rmsprop", lr=0.01)
    p = r.variables["params"]
    for node in ("c1.conv1", "c3.conv1", "c5.conv1"):
        assert np.asarray(p[node]["kernel"]).tobytes() == np.asarray(init["params"][node]["kernel"]).tobytes()
    assert not np.array_equal(p["out.fc1"]["kernel"], init["params"]["out.fc1"]["kernel"])
    assert not np.array_equal(p["f6.fc1"]["kernel"], init["params"]["f6.fc1"]["kernel"])


L2NORM_NET = "input 32x32x1\nbody: conv3(4) relu l2norm(init=20)\nout: gap fc(4)\n"


@pytest.mark.parametrize("freeze", [{"freeze_all_but_head": True}, {"freeze": ["body.l2norm1"]}],
                         ids=["all-but-head", "pattern"])
def test_freeze_l2norm_scale(tmp_path, freeze):
    import archc
    spec = tmp_path / "l2.arch"
    spec.write_text(L2NORM_NET)
    init = archc.load(str(spec)).init(seed=0)["params"]
    p = _fit(str(spec), **freeze).variables["params"]
    assert np.asarray(p["body.l2norm1"]["scale"]).tobytes() == np.asarray(init["body.l2norm1"]["scale"]).tobytes()
    assert not np.array_equal(p["out.fc1"]["kernel"], init["out.fc1"]["kernel"])


def test_remat_same_and_bf16_close():
    ref = _fit(epochs=2)
    rem = _fit(epochs=2, remat=True)
    np.testing.assert_allclose(rem.step_losses, ref.step_losses, rtol=1e-5, atol=1e-6)
    # bf16 compute on a network with batch norm: finite, close, f32 params and statistics
    x, y = _arrays(n=16, channels=3)
    bf = T.train("cifar_resnet_v1", train_data=(x, y), classes=4, epochs=1, batch=8,
                 augment=False, progress=False, lr=0.01, bf16=True, log=quiet)
    assert np.all(np.isfinite(bf.step_losses))
    assert abs(bf.step_losses[0] - np.log(4)) < 1.0
    assert all(np.asarray(v).dtype == np.float32 for leaves in bf.variables["params"].values()
               for v in leaves.values())
    stats = bf.variables["batch_stats"]["block1.bn1"]
    assert stats["mean"].dtype == np.float32 and np.any(stats["mean"] != 0)
