"""Tasks (runtime/tasks.py): chosen from the network, losses and metrics against torch's and
scikit-learn's, the public training step in a user's own loop, a custom loss as a function."""
from __future__ import annotations

import numpy as np
import pytest

import archc
from archc.runtime import tasks as T
from train_helpers import run_cli, write_random

SEGMENTER = "param classes = 4\ninput 16x16x3\nconv3(8) relu\nout: conv1(classes)\n"
CLASSIFIER = "param classes = 5\ninput 16x16x3\nconv3(8) relu maxpool2\ngap\nhead: fc(classes)\n"


@pytest.fixture
def specs(tmp_path):
    (tmp_path / "seg.arch").write_text(SEGMENTER)
    (tmp_path / "cls.arch").write_text(CLASSIFIER)
    return tmp_path


def test_the_task_follows_from_the_network(specs):
    assert T.task_kind(archc.load(str(specs / "cls.arch"))) == "classification"
    assert T.task_kind(archc.load(str(specs / "seg.arch"))) == "segmentation"
    assert T.task_kind(archc.load("ssd300_vgg16")) == "detection"
    from archc.detection.task import Detection
    assert isinstance(T.make_task(archc.load("ssd300_vgg16")), Detection)     # tests/test_detection_losses.py
    # --task overrides what the outputs call for
    seg = archc.load(str(specs / "seg.arch"))
    with pytest.raises(T.TaskError, match="must be one of"):
        T.make_task(seg, "regression")
    assert isinstance(T.make_task(seg, "segmentation"), T.Segmentation)


def test_archc_train_on_a_detector_with_class_folders_says_so_in_one_line(tmp_path):
    data = write_random(tmp_path / "d", classes=2, per_class=4, mode="RGB")
    r = run_cli(["train", "ssd300_vgg16", "--data", data, "--out", tmp_path / "run"])
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "detection data is a COCO JSON file" in r.stderr, r.stderr


def _logits(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 3


def test_classification_metrics_against_torch_and_sklearn():
    import torch
    from sklearn.metrics import confusion_matrix
    k = 7
    logits = _logits((40, k))
    y = np.random.default_rng(1).integers(0, k, 40).astype(np.int32)
    weight = np.ones(40, np.float32)
    weight[-5:] = 0                                   # the padding of a last evaluation batch
    task = _on_given_logits(T.Classification)
    sums = task.metric_sums({"logits": logits}, {"label": y, "weight": weight})
    m = task.summarize({n: np.asarray(v) for n, v in sums.items()})
    t, ty = torch.from_numpy(logits[:35]), torch.from_numpy(y[:35]).long()
    assert m["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(t, ty)), rel=1e-6)
    assert m["accuracy"] == pytest.approx(float((t.argmax(1) == ty).float().mean()))
    assert m["top5"] == pytest.approx(float((t.topk(5, 1).indices == ty[:, None]).any(1).float().mean()))
    cm = confusion_matrix(y[:35], logits[:35].argmax(1), labels=range(k))
    assert m["confusion"] == cm.tolist()
    per = cm.diagonal() / cm.sum(1)
    assert m["per_class_accuracy"] == pytest.approx([float(v) for v in per])


def _on_given_logits(cls):
    """A task reading the logits it is given under the name "logits" (no network is run)."""
    return type(cls.__name__, (cls,), {"outputs": property(lambda self: ("logits",))})(model=None)


def test_segmentation_loss_and_metrics_as_torchvisions_references():
    import torch
    n = 4
    logits = _logits((3, 8, 8, n), seed=2)
    y = np.random.default_rng(3).integers(0, n, (3, 8, 8)).astype(np.int32)
    y[:, :2] = 255                                   # ignored pixels
    task = _on_given_logits(T.Segmentation)
    loss = float(task.losses({"logits": logits}, {"label": y})["cross_entropy"])
    t = torch.from_numpy(logits).permute(0, 3, 1, 2)
    ty = torch.from_numpy(y).long()
    ref = float(torch.nn.functional.cross_entropy(t, ty, ignore_index=255))
    assert loss == pytest.approx(ref, rel=1e-6)
    sums = task.metric_sums({"logits": logits}, {"label": y})
    m = task.summarize({k: np.asarray(v) for k, v in sums.items()})
    # torchvision references/segmentation/utils.py ConfusionMatrix, written out in torch
    a, b = ty.flatten(), t.argmax(1).flatten()
    k = (a >= 0) & (a < n)
    h = torch.bincount(n * a[k] + b[k], minlength=n ** 2).reshape(n, n).double()
    acc_global = torch.diag(h).sum() / h.sum()
    iu = torch.diag(h) / (h.sum(1) + h.sum(0) - torch.diag(h))
    assert m["confusion"] == h.long().tolist()
    assert m["pixel_accuracy"] == pytest.approx(float(acc_global))
    assert m["per_class_iou"] == pytest.approx(iu.tolist())
    assert m["mIoU"] == pytest.approx(float(iu.mean()))
    assert m["loss"] == pytest.approx(ref, rel=1e-6)


def test_a_users_own_loop_with_make_train_step(specs):
    """The documented loop: make_train_step + train_state + evaluate; the loss falls and the
    evaluation's accuracy is the one computed by hand from the model's outputs."""
    import optax
    model = archc.load(str(specs / "cls.arch"), classes=2)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16, 16, 3)).astype(np.float32)
    y = (x[..., 0].mean((1, 2)) > 0).astype(np.int32)
    x[..., 0] += np.where(y, 1.0, -1.0)[:, None, None]      # learnable
    task = archc.make_task(model)
    opt = optax.adam(1e-2)
    step = archc.make_train_step(task, opt)
    state = archc.train_state(task, opt, model.init(seed=0))
    losses = []
    for epoch in range(5):
        for i in range(0, 64, 16):
            state, m = step(state, {"image": x[i:i + 16], "label": y[i:i + 16]})
            losses.append(m["loss"])
    losses = [float(v) for v in losses]
    assert losses[-1] < 0.5 * losses[0]
    variables = {"params": {**state["frozen"], **state["trainable"]}, "batch_stats": state["batch_stats"]}
    metrics = T.evaluate(task, variables, [{"image": x[:32], "label": y[:32]}, {"image": x[32:], "label": y[32:]}])
    by_hand = float(np.mean(np.asarray(model.apply(variables, x)).argmax(-1) == y))
    assert metrics["accuracy"] == pytest.approx(by_hand)
    # archc.losses: the same cross-entropy as the task's evaluation
    got = archc.losses(model, variables, x, y)["cross_entropy"]
    assert float(got) == pytest.approx(metrics["loss"], rel=1e-5)


def test_a_custom_loss_is_a_function(specs):
    """loss_fn replaces the task's losses: a loss that ignores the weights leaves them unchanged
    under plain SGD, and a custom term is reported by name."""
    import jax.numpy as jnp
    import optax
    model = archc.load(str(specs / "cls.arch"), classes=2)
    task = archc.make_task(model)
    x = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype(np.float32)
    batch = {"image": x, "label": np.zeros(8, np.int32)}
    init = model.init(seed=0)
    step = archc.make_train_step(task, optax.sgd(0.1), loss_fn=lambda out, b, rng: {"zero": 0.0 * jnp.sum(out["head.fc1"])})
    state, m = step(archc.train_state(task, optax.sgd(0.1), init), batch)
    assert float(m["zero"]) == 0.0
    for node, leaves in init["params"].items():
        for leaf, v in leaves.items():
            np.testing.assert_array_equal(np.asarray(state["trainable"][node][leaf]), np.asarray(v))
    step = archc.make_train_step(task, optax.sgd(0.1))
    state2, _ = step(archc.train_state(task, optax.sgd(0.1), init), batch)
    assert not np.array_equal(np.asarray(state2["trainable"]["head.fc1"]["kernel"]),
                              np.asarray(init["params"]["head.fc1"]["kernel"]))
