"""Detection losses against the reference: torchvision's train-mode forward (``model.train()``,
``model(images, targets)`` returns its loss dict) on the same weights, images and targets for
SSD300 and Faster R-CNN MobileNetV3-Large 320, and a NumPy transcription of the YOLO v1 paper's
loss; the matcher against torchvision's own Matcher/SSDMatcher; one SGD step of SSD300 against
torch.optim.SGD.

Every comparison runs both libraries in float64 (the matching thresholds, NMS of the training
proposals and the hard-negative ranking are discrete steps that float32 noise could flip), with
samplers larger than the candidate counts, so that torchvision's randperm picks every candidate
and no randomness differs. torchvision's ``loss_objectness`` is float32 even in a float64 model
(its anchor labels are float32 and binary_cross_entropy_with_logits returns the target's
dtype), so that key agrees to float32 rounding (~1e-7 relative), the others to ~1e-15."""
from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import archc
from archc.detection.api import DetectError
from archc.runtime import tasks as T
from archc.runtime.weights import import_weights

torch = pytest.importorskip("torch")
D = pytest.importorskip("torchvision.models.detection")

pytestmark = pytest.mark.usefixtures("highest_precision")
RTOL = 1e-6
CLASSES = 5
# samplers above every candidate count: torchvision's randperm then takes every candidate
TAKE_ALL = dict(rpn_batch_size_per_image=100_000, box_batch_size_per_image=100_000)
# few training proposals keep the box head small (the same setting in both libraries)
FRCNN = dict(rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=60, **TAKE_ALL)

TARGETS = [{"boxes": np.array([[10.0, 20, 120, 200], [150, 40, 290, 100], [60, 150, 100, 190]]),
            "labels": np.array([1, 3, 2])},
           {"boxes": np.array([[30.0, 30, 200, 220]]), "labels": np.array([4])}]


def _torch_losses(tm, images, targets, frozen_bn=True):
    t64 = copy.deepcopy(tm).double().train()
    if frozen_bn:
        for m in t64.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    out = t64([torch.from_numpy(im.transpose(2, 0, 1)) for im in images],
              [{"boxes": torch.from_numpy(t["boxes"]), "labels": torch.from_numpy(t["labels"])} for t in targets])
    return t64, out


def _archc_losses(model, variables, images, targets, bn="frozen"):
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
        got = archc.losses(model, v64, images, targets, bn=bn)
        assert all(v.dtype == jnp.float64 for v in got.values())
        return {k: float(v) for k, v in got.items()}


def _assert_same(got, want):
    assert set(got) == set(want)
    for k, w in want.items():
        w = w.item()
        assert w > 0, k                                     # a term that is there
        assert abs(got[k] - w) <= RTOL * abs(w), (k, got[k], w, abs(got[k] - w) / abs(w))


# ---------------------------------------------------------------------------------------------
# SSD300
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ssd(tmp_path_factory):
    torch.manual_seed(0)
    tm = D.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=CLASSES)
    path = tmp_path_factory.mktemp("ssd") / "ssd.pth"
    torch.save(tm.state_dict(), path)
    model = archc.load("ssd300_vgg16", classes=CLASSES)
    variables, report = import_weights(model, path, source="torchvision")
    assert report.ok
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (300, 300, 3)), rng.uniform(0, 1, (240, 400, 3))]    # the second one resized
    return tm, model, variables, images


@pytest.mark.isa
def test_ssd300_losses_equal_torchvision_train_mode(ssd):
    """bbox_regression and classification (hard negatives 3:1) within 1e-6 relative (measured
    4e-16 and 2e-16)."""
    tm, model, variables, images = ssd
    _, want = _torch_losses(tm, images, TARGETS)
    _assert_same(_archc_losses(model, variables, images, TARGETS), want)


def _in_archc_layout(model, state: dict, directory):
    """torchvision tensors (float64) in archc's variables through the import mapping, exactly:
    the import stores float32, so the float32 part and the remainder travel separately."""
    high = {k: v.float() for k, v in state.items()}
    low = {k: (v - high[k].double()).float() for k, v in state.items()}
    out = []
    for name, part in (("high", high), ("low", low)):
        torch.save(part, directory / f"{name}.pth")
        out.append(import_weights(model, directory / f"{name}.pth", source="torchvision")[0]["params"])
    return jax.tree.map(lambda h, lo: np.asarray(h, np.float64) + np.asarray(lo, np.float64), *out)


@pytest.mark.isa
@pytest.mark.slow      # the float64 backward pass of SSD300 in both libraries: ~1-3 minutes on 2 shared cores
def test_ssd300_one_sgd_step_equals_torch(ssd, tmp_path):
    """make_train_step with optax.sgd against torch.optim.SGD (momentum 0) on the summed losses:
    every parameter after the step within 1e-6 relative of torchvision's, and every update
    (parameter after - before) within 1e-6 of its tensor's largest update."""
    import optax
    from archc.detection.task import detection_batch
    tm, model, variables, images = ssd
    lr = 0.01
    t64 = copy.deepcopy(tm).double().train()
    opt = torch.optim.SGD(t64.parameters(), lr=lr, momentum=0.0)
    losses = t64([torch.from_numpy(im.transpose(2, 0, 1)) for im in images],
                 [{"boxes": torch.from_numpy(t["boxes"]), "labels": torch.from_numpy(t["labels"])} for t in TARGETS])
    total = sum(losses.values())
    total.backward()
    opt.step()
    want = _in_archc_layout(model, {k: v.detach() for k, v in t64.state_dict().items()}, tmp_path)
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
        task = T.make_task(model)
        step = T.make_train_step(task, optax.sgd(lr), bn="frozen")
        state = T.train_state(task, optax.sgd(lr), v64)
        state, metrics = step(state, detection_batch(task, images, TARGETS))
        after = jax.device_get(state["trainable"])
    assert abs(float(metrics["loss"]) - total.item()) <= RTOL * total.item()
    checked, unmoved = 0, set()
    for node, leaves in v64["params"].items():
        for leaf, p0 in leaves.items():
            got, theirs = np.asarray(after[node][leaf]), want[node][leaf]
            np.testing.assert_allclose(got, theirs, rtol=RTOL, atol=0, err_msg=f"{node}/{leaf}")
            update = theirs - p0
            np.testing.assert_allclose(got - p0, update, rtol=0, atol=RTOL * np.abs(update).max(),
                                       err_msg=f"{node}/{leaf} update")
            if not np.abs(update).max() > 0:
                unmoved.add(f"{node}/{leaf}")
            checked += 1
    assert checked == sum(1 for _ in tm.parameters())
    # only the 1x1 level (its heads and conv11_2 under them) stays exactly where it was, in both:
    # none of its 4 default boxes (0.87-1.05 of the image) is foreground for these targets or
    # among the hard negatives
    assert unmoved and {n.split(".")[0] for n in unmoved} <= {"box6", "cls6", "conv11_2"}, unmoved
    assert checked - len(unmoved) >= 30


# ---------------------------------------------------------------------------------------------
# Faster R-CNN MobileNetV3-Large 320 FPN
# ---------------------------------------------------------------------------------------------
FRCNN_NAME = "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.fixture(scope="module")
def frcnn(tmp_path_factory):
    torch.manual_seed(0)
    tm = getattr(D, FRCNN_NAME)(weights=None, weights_backbone=None, num_classes=CLASSES, **FRCNN)
    g = torch.Generator().manual_seed(1)
    for mod in tm.modules():        # statistics that are not the identity, so that frozen BN matters
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1, generator=g)
            mod.running_var.uniform_(0.5, 2.0, generator=g)
    path = tmp_path_factory.mktemp("frcnn") / "frcnn.pth"
    torch.save(tm.state_dict(), path)
    model = archc.load(FRCNN_NAME, classes=CLASSES, **FRCNN)
    variables, report = import_weights(model, path, source="torchvision")
    assert report.ok
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (320, 320, 3)), rng.uniform(0, 1, (320, 320, 3))]
    return tm, model, variables, images


@pytest.mark.isa
def test_fasterrcnn_losses_equal_torchvision_train_mode(frcnn):
    """The four losses with frozen BN (torchvision's BatchNorm2d in eval mode inside the
    train-mode model: what FrozenBatchNorm2d computes): measured 3e-16, 0, 9e-8 (float32
    objectness, see the module's note), 0."""
    tm, model, variables, images = frcnn
    _, want = _torch_losses(tm, images, TARGETS)
    _assert_same(_archc_losses(model, variables, images, TARGETS), want)


@pytest.mark.isa
@pytest.mark.slow
def test_fasterrcnn_losses_with_batch_statistics_and_an_empty_image(frcnn):
    """bn="batch" (BatchNorm2d in training mode), one image resized and padded, one without
    boxes (a negative: torchvision's background path)."""
    tm, model, variables, _ = frcnn
    rng = np.random.default_rng(1)
    images = [rng.uniform(0, 1, (320, 320, 3)), rng.uniform(0, 1, (250, 330, 3))]
    targets = [TARGETS[0], {"boxes": np.zeros((0, 4)), "labels": np.zeros((0,), np.int64)}]
    _, want = _torch_losses(tm, images, targets, frozen_bn=False)
    _assert_same(_archc_losses(model, variables, images, targets, bn="batch"), want)


@pytest.mark.slow      # compiling the two-phase training forward twice: ~4-5 minutes on 2 shared cores
def test_fasterrcnn_trains_with_the_generic_step(frcnn):
    """The Detection task's two-phase forward (sampling in between) is differentiated through the
    box head, the RPN head and the backbone down to its stem (non-zero gradients), and
    make_train_step lowers the summed loss over a few steps on one batch."""
    import optax
    from archc.detection.task import detection_batch
    _, model, variables, images = frcnn
    model = archc.load(FRCNN_NAME, classes=CLASSES)              # torchvision's default sampler sizes
    task = T.make_task(model)
    batch = detection_batch(task, [im.astype(np.float32) for im in images], TARGETS)
    key = jax.random.PRNGKey(0)

    def total(params):
        out, _ = task.apply({**variables, "params": params}, batch, train=False, rng=key)
        return sum(task.losses(out, batch, key).values())
    grads = jax.jit(jax.grad(total))(variables["params"])
    for node in ("cls_score.fc1", "bbox_pred.fc1", "box_head.fc1", "rpn_cls0.conv1", "rpn_box0.conv1", "inner0.conv1",
                 "body.stem.conv1"):
        assert np.abs(np.asarray(grads[node]["kernel"])).max() > 0, node
    opt = optax.sgd(0.01)
    step = T.make_train_step(task, opt, bn="frozen")
    state = T.train_state(task, opt, variables)
    losses = []
    for _ in range(4):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert set(m) >= {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert losses[-1] < losses[0], losses


def test_training_settings_are_family_parameters():
    m = archc.load(FRCNN_NAME, classes=5, rpn_batch_size_per_image=512, box_positive_fraction=0.5,
                   rpn_pre_nms_top_n_train=1000)
    rpn, det = m.graph.declarations["rpn"], m.graph.declarations["detect"]
    assert (rpn.batch_size_per_image, rpn.pre_nms_top_n_train, rpn.post_nms_top_n_train) == (512, 1000, 2000)
    assert (rpn.fg_iou_thresh, rpn.bg_iou_thresh, rpn.positive_fraction) == (0.7, 0.3, 0.5)
    assert (det.batch_size_per_image, det.positive_fraction, det.fg_iou_thresh) == (512, 0.5, 0.5)
    ssd = archc.load("ssd300_vgg16", iou_thresh=0.4, positive_fraction=0.2).graph.declarations["detect"]
    assert (ssd.fg_iou_thresh, ssd.bg_iou_thresh, ssd.positive_fraction) == (0.4, 0.4, 0.2)
    with pytest.raises(Exception, match="bg_iou_thresh"):
        archc.load(FRCNN_NAME, rpn_bg_iou_thresh=0.8)


# ---------------------------------------------------------------------------------------------
# The matcher and the sampler against torchvision's
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("low_quality", [False, True])
def test_matcher_equals_torchvision(low_quality):
    from torchvision.models.detection._utils import Matcher, SSDMatcher
    from archc.detection.matcher import match, ssd_match
    rng = np.random.default_rng(0)
    # one shape (7 boxes, 40 priors) for every trial: rows past g are padding boxes, columns past n
    # priors that no box overlaps (-1: never a best match)
    m = jax.jit(lambda q, v: match(q, v, 0.7, 0.3, low_quality))
    s = jax.jit(lambda q, v: ssd_match(q, v, 0.5))
    for trial in range(20):
        g, n = rng.integers(1, 6), rng.integers(5, 40)
        q = np.round(rng.uniform(0, 1, (g, n)), 1)           # rounded: ties and values on the thresholds
        pad = np.full((7, 40), -1.0)
        pad[:g, :n] = q
        pad[g:, :n] = rng.uniform(0, 1, (7 - g, n))           # padding boxes must match nothing
        valid = jnp.asarray(np.arange(7) < g)
        want = Matcher(0.7, 0.3, low_quality)(torch.from_numpy(q)).numpy()
        np.testing.assert_array_equal(np.asarray(m(jnp.asarray(pad), valid))[:n], want)
        if not low_quality:
            want = SSDMatcher(0.5)(torch.from_numpy(q)).numpy()
            np.testing.assert_array_equal(np.asarray(s(jnp.asarray(pad), valid))[:n], want)


def test_sampler_takes_the_quotas_at_random_and_everything_when_it_fits():
    from archc.detection.sampler import sample
    labels = jnp.asarray(np.r_[np.ones(30, int), np.zeros(200, int), -np.ones(20, int)])
    pos, neg = sample(labels, jax.random.PRNGKey(0), 64, 0.25)
    assert int(pos.sum()) == 16 and int(neg.sum()) == 48
    assert not bool((pos & (labels != 1)).any() | (neg & (labels != 0)).any())
    pos2, _ = sample(labels, jax.random.PRNGKey(1), 64, 0.25)
    assert bool((pos != pos2).any())                       # another key, another subset
    pos, neg = sample(labels, jax.random.PRNGKey(0), 1000, 0.5)
    assert int(pos.sum()) == 30 and int(neg.sum()) == 200  # all of them, whatever the key


# ---------------------------------------------------------------------------------------------
# YOLO v1 against the paper's loss, transcribed in NumPy
# ---------------------------------------------------------------------------------------------
def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def yolo_v1_loss_reference(out, boxes, labels, S, B, C, W, H, l_coord=5.0, l_noobj=0.5):
    """Redmon et al. 2016, Eq. 3, for one image, cell by cell: ``out`` (S, S, 5B + C) with each
    predictor (x, y, √w, √h, C); ``boxes`` xyxy pixels in a W×H image; labels 1-based."""
    cell_obj = {}
    for b, lab in zip(boxes, labels):            # the cell of the centre; a later box replaces
        cx, cy = (b[0] + b[2]) / 2 / W, (b[1] + b[3]) / 2 / H
        cell_obj[(min(int(cy * S), S - 1), min(int(cx * S), S - 1))] = (b, lab)
    coord = obj = noobj = cls = 0.0
    for i in range(S):
        for j in range(S):
            preds = [out[i, j, 5 * k:5 * k + 5] for k in range(B)]
            if (i, j) not in cell_obj:
                noobj += l_noobj * sum(p[4] ** 2 for p in preds)
                continue
            b, lab = cell_obj[(i, j)]
            ious = []
            for p in preds:
                cx, cy = (p[0] + j) / S * W, (p[1] + i) / S * H
                w, h = p[2] ** 2 * W, p[3] ** 2 * H
                ious.append(_iou([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], b))
            r = int(np.argmax(ious))
            tx, ty = (b[0] + b[2]) / 2 / W * S - j, (b[1] + b[3]) / 2 / H * S - i
            tw, th = np.sqrt((b[2] - b[0]) / W), np.sqrt((b[3] - b[1]) / H)
            p = preds[r]
            coord += l_coord * ((p[0] - tx) ** 2 + (p[1] - ty) ** 2 + (p[2] - tw) ** 2 + (p[3] - th) ** 2)
            obj += (p[4] - ious[r]) ** 2
            noobj += l_noobj * sum(q[4] ** 2 for k, q in enumerate(preds) if k != r)
            onehot = np.eye(C)[lab - 1]
            cls += np.sum((out[i, j, 5 * B:] - onehot) ** 2)
    return {"coordinates": coord, "objectness": obj, "no_object": noobj, "classification": cls}


def test_yolo_v1_loss_equals_the_papers_sum_squared_error():
    from archc.detection.task import Detection
    model = archc.load("yolo_v1", res=112)
    task = Detection(model)
    g = task.detector.grid
    S, B, C = g.side, g.boxes, g.classes
    rng = np.random.default_rng(0)
    out = rng.uniform(0.05, 0.95, (2, S, S, 5 * B + C))
    boxes = np.array([[[5.0, 8, 60, 70], [70, 10, 100, 40], [72, 12, 98, 30]],   # two centres in one cell
                      [[20.0, 30, 90, 100], [0, 0, 0, 0], [0, 0, 0, 0]]])
    labels = np.array([[3, 7, 12], [20, 0, 0]])
    count = np.array([3, 1])
    with jax.enable_x64(True):
        batch = {"image": jnp.zeros((2, 112, 112, 3)), "boxes": jnp.asarray(boxes), "labels": jnp.asarray(labels),
                 "count": jnp.asarray(count)}
        got = jax.jit(task.losses)({task.outputs[0]: jnp.asarray(out)}, batch)
        got = {k: float(v) for k, v in got.items()}
    per_image = [yolo_v1_loss_reference(out[i], boxes[i, :count[i]], labels[i, :count[i]], S, B, C, 112, 112)
                 for i in range(2)]
    for k in got:
        want = (per_image[0][k] + per_image[1][k]) / 2
        assert want > 0 and abs(got[k] - want) <= 1e-12 * want, (k, got[k], want)


TINY_YOLO = """\
# a user's YOLO v1: the library's declarations on a network of one's own
param S = 4
param B = 2
param C = 3

input(64, 64, 3)
body: conv(8, 3, s=2) relu maxpool2 conv(16, 3, s=2) relu maxpool2
fc:   flatten fc(S * S * (B * 5 + C)) sigmoid reshape([S, S, B * 5 + C])

detect_input(mean=[0, 0, 0], std=[1, 1, 1], fixed_size=[64, 64], size_divisible=1)
yolo_grid(side=S, boxes=B, classes=C)
detect(kind="yolo_v1", scores=@fc, topk_candidates=S * S * B)
"""


def test_a_users_yolo_trains_with_the_generic_step(tmp_path):
    """Gradients of the YOLO loss through make_train_step reach a network written by a user
    (the loss falls on one batch), and archc.losses takes torchvision-style inputs for it."""
    import optax
    (tmp_path / "tiny_yolo.arch").write_text(TINY_YOLO)
    model = archc.load(str(tmp_path / "tiny_yolo.arch"))
    task = T.make_task(model)
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (64, 64, 3)).astype(np.float32), rng.uniform(0, 1, (80, 96, 3)).astype(np.float32)]
    targets = [{"boxes": np.array([[5.0, 8, 40, 50]]), "labels": np.array([3])},
               {"boxes": np.array([[20.0, 30, 90, 70], [0, 0, 30, 20]]), "labels": np.array([1, 2])}]
    from archc.detection.task import detection_batch
    batch = detection_batch(task, images, targets)
    assert batch["image"].shape == (2, 64, 64, 3) and batch["boxes"].shape == (2, 2, 4)
    np.testing.assert_allclose(np.asarray(batch["boxes"][1, 0]), [20 * 64 / 96, 30 * 64 / 80, 90 * 64 / 96, 70 * 64 / 80],
                               rtol=1e-6)
    opt = optax.adam(1e-2)
    step = T.make_train_step(task, opt, bn="frozen")
    state = T.train_state(task, opt, model.init(seed=0))
    first = float(sum(archc.losses(model, model.init(seed=0), images, targets).values()))
    for _ in range(10):
        state, m = step(state, batch)
    assert set(m) >= {"coordinates", "objectness", "no_object", "classification", "loss"}
    assert abs(float(m["loss"]) - first) > 0 and float(m["loss"]) < first
    # evaluation: the losses' means over the batches, and the score the loop maximises
    variables = {"params": {**state["frozen"], **state["trainable"]}}
    metrics = T.evaluate(task, variables, [batch, batch])
    direct = {k: float(v) for k, v in archc.losses(model, variables, images, targets).items()}
    for k, v in direct.items():
        assert abs(metrics[k] - v) <= 1e-5 * abs(v), (k, metrics[k], v)
    assert abs(metrics["negative_loss"] + sum(direct.values())) <= 1e-5 * sum(direct.values())


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_bad_targets_are_named(ssd):
    _, model, variables, images = ssd
    bad = [dict(TARGETS[0], labels=np.array([1, 5, 2])), TARGETS[1]]
    with pytest.raises(DetectError, match=r"target 0: labels are integers in 1\.\.4"):
        archc.losses(model, variables, images, bad)
    bad = [TARGETS[0], {"boxes": np.array([[30.0, 30, 20, 220]]), "labels": np.array([4])}]
    with pytest.raises(DetectError, match=r"target 1: box 0 .* x2 <= x1"):
        archc.losses(model, variables, images, bad)
    with pytest.raises(DetectError, match="2 images but 1 targets"):
        archc.losses(model, variables, images, TARGETS[:1])
    with pytest.raises(T.TaskError, match="bn is 'frozen' or 'batch'"):
        archc.losses(model, variables, images, TARGETS, bn="update")
