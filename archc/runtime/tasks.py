"""Training tasks: what a batch holds, the losses, the metrics, and what a run records.

One training step (:func:`make_train_step`), one evaluation (:func:`evaluate`) and one loop
(runtime/train.py) serve every task; a task says only what is particular to it:

=================  ==========================================================================
``outputs``        the node names the losses read (a classifier's logits)
``losses``         ``(outputs, batch, rng) -> {name: scalar}``: the training objective is
                   their sum; jit-traceable
``metric_sums``    ``(outputs, batch) -> {name: array}``: sums over the batch, added on the
                   device batch after batch (no host sync per step)
``summarize``      ``sums -> {name: float | list}`` on the host, once per logging interval
``score``          the metric the best checkpoint maximises (``score_name``)
``record``         what the weights record for inference (``archc.task``, class names)
``apply``          the forward pass of training and evaluation (default: the network's
                   ``outputs``; a two-stage detector runs its stages with sampling between)
=================  ==========================================================================

Batches are dicts of arrays, a leading batch axis everywhere:

* classification: ``image`` (B, H, W, C) float32, ``label`` (B,) int32;
* segmentation: ``image``, ``label`` (B, H, W) int32 class per pixel (255: ignored), and with
  ``loss="weighted"`` ``pixel_weight`` (B, H, W) float32 (the U-Net paper's weight map);
* detection: ``image`` (transformed as the network's ``detect_input`` says), ``boxes`` (B, N,
  4) xyxy in the transformed image's pixels, ``labels`` (B, N) (1-based, 0 is the background),
  ``count`` (B,): per-image target lists padded to N with their lengths, so that shapes stay
  static under ``jit``; optionally ``size`` (B, 2) each image's size before padding. Its
  losses sample (``rng``); archc/detection/task.py.

Every batch also holds ``weight`` (B,) float32: 0 for the padding of a last evaluation batch
(the Loader adds it).

The data a task reads (``archc train``, ``archc evaluate``). A data set is anything with
``len()``, ``classes`` (the names, in output order), ``root`` (where it was read) and
``example(i)``: one raw example as a dict (classification ``{"image": PIL, "label": int}``,
segmentation ``{"image": PIL, "mask": (H, W) uint8}``; detection's will be ``{"image", "boxes",
"labels"}``); the task's transform turns it into the batch's keys without the batch axis, of
fixed shapes (detection: ``boxes`` padded to N, and ``count``), and runtime/data.py's ``Loader``
stacks them (grain batches the dicts):

=====================  =====================================================================
``read_data``          ``(root, *, val_split, seed) -> (train, val | None)`` from ``--data``
``read_eval_data``     ``(root) -> data``: ``archc evaluate``'s (``DIR/val``, else ``DIR``)
``check_data``         ``(data, on_bad, log) -> data``: bad examples reported by file and
                       value, then a DataError (``stop``) or left out (``skip``)
``augmentation``       ``(recipe, shape, crop_scale, flip) -> Augmentation`` (``describe()``,
                       ``crop_scale``, ``flip``: what config.json keeps for ``--resume``)
``transform``          ``(shape, pipeline, augmentation | None) -> (example, rng) -> dict``:
                       one example as fixed-shape arrays; ``augmentation`` None (and ``rng``
                       None): evaluation, the pipeline's resize only (runtime/pipeline.py).
                       ``rng`` is a function of (seed, epoch, example): the same draws in
                       every run, thread and resume
=====================  =====================================================================

``default_optimizer`` is ``archc train``'s when ``--optimizer`` is not given. What the loop
shows and keeps: ``train_sums`` (the cheap ``metric_sums`` added up over a
training epoch), ``train_metrics`` and ``val_metrics`` (the ``summarize`` keys recorded per epoch
as ``train_<key>``, ``val_<key>`` in metrics.json), ``score_name`` (``best_val_<score>``, the best
checkpoint) and ``score_label`` (its short name in the progress line).

A user's own loop::

    task = Classification(model, classes=["cat", "dog"])
    step = make_train_step(task, optax.adamw(1e-3))
    state = train_state(task, optax.adamw(1e-3), model.init(seed=0))
    for batch in batches:                     # dicts as above
        state, metrics = step(state, batch)   # metrics: device arrays, summed over the batch
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .logits import logits_node

IGNORE_INDEX = 255
TASKS = ("classification", "segmentation", "detection")


class TaskError(ValueError):
    """A network or option that no task fits (CLI: one line, exit status 2)."""


# --------------------------------------------------------------------------------------------
# Choosing the task from the network
# --------------------------------------------------------------------------------------------
def task_kind(model) -> str:
    """The task a network's outputs call for: a ``detect(...)`` declaration -> detection; class
    scores per pixel at the input's resolution -> segmentation; a vector -> classification."""
    g = model.graph
    if g.declarations.get("detect") is not None:
        return "detection"
    shape = tuple(g.nodes[logits_node(g)].shape)
    if len(shape) == 1:
        return "classification"
    if len(shape) == 3 and tuple(shape[:2]) == tuple(g.input_shape[:2]):
        return "segmentation"
    if len(shape) == 3 and all(o < i for o, i in zip(shape[:2], g.input_shape[:2])):
        # unpadded convolutions (the U-Net paper's): scores for the centre of the input only
        fix = ("use --param padding=same (padded convolutions)" if "padding" in g.params else
               "pad its convolutions so that its output keeps the input's size")
        raise TaskError(f"{g.name}: its output {'x'.join(map(str, shape))} is per-pixel class scores smaller than "
                        f"its input {g.input_shape[0]}x{g.input_shape[1]} (unpadded convolutions); training and "
                        f"evaluation need scores at the input's size: {fix}")
    raise TaskError(f"{g.name}: its output {'x'.join(map(str, shape))} is neither class scores (a vector) "
                    f"nor per-pixel class scores at the input's {g.input_shape[0]}x{g.input_shape[1]}")


def make_task(model, kind: str | None = None, *, classes: Sequence[str] | None = None,
              label_smoothing: float = 0.0, loss: str | None = None) -> "Task":
    """The task for ``model`` (``kind`` overrides what its outputs call for). ``loss``: a
    segmentation loss (``ce``, ``weighted``, ``dice``; classification: ``ce`` only)."""
    chosen = kind or task_kind(model)
    if chosen not in TASKS:
        raise TaskError(f"--task must be one of {', '.join(TASKS)}, not {chosen!r}")
    if chosen == "detection":
        from ..detection.task import Detection
        return Detection(model, classes=list(classes) if classes is not None else None)
    if chosen == "segmentation":
        return Segmentation(model, classes=list(classes) if classes is not None else None, loss=loss or "ce")
    if loss not in (None, "ce"):
        raise TaskError(f"--loss {loss} is a segmentation loss; a classifier trains with cross-entropy")
    return Classification(model, classes=list(classes) if classes is not None else None,
                          label_smoothing=label_smoothing)


# --------------------------------------------------------------------------------------------
# The tasks
# --------------------------------------------------------------------------------------------
@dataclass
class Task:
    """What is particular to a task (see the module's table). ``model``: an archc Model."""

    model: object
    classes: list | None = None
    name: str = field(default="", init=False)
    score_name: str = field(default="", init=False)
    score_label: str = field(default="", init=False)
    train_sums: tuple = field(default=(), init=False)
    train_metrics: tuple = field(default=(), init=False)
    val_metrics: tuple = field(default=(), init=False)
    # archc train's optimizer when --optimizer is not given
    default_optimizer: str = field(default="sgd", init=False)

    @property
    def outputs(self) -> tuple:
        return (logits_node(self.model.graph),)

    @property
    def num_classes(self) -> int:
        return int(self.model.graph.nodes[self.outputs[0]].shape[-1])

    def apply(self, variables: Mapping, batch: Mapping, *, train: bool, rng=None, dtype=None):
        """``(outputs, batch_stats)``: the network's ``outputs`` on ``batch["image"]``, in training
        mode (batch statistics, dropout with ``rng``) or not."""
        model = self.model
        if train:
            use_rng = rng if model.program.has_dropout else None
            out, new = model.apply_fn(variables, batch["image"], train=True, rng=use_rng, outputs=self.outputs,
                                      dtype=dtype)
            return out, new.get("batch_stats", {})
        out = model.apply_fn(variables, batch["image"], train=False, outputs=self.outputs, dtype=dtype)
        return out, variables.get("batch_stats", {})

    def losses(self, outputs: Mapping, batch: Mapping, rng=None) -> dict:
        raise NotImplementedError

    def metric_sums(self, outputs: Mapping, batch: Mapping, *, full: bool = True) -> dict:
        raise NotImplementedError

    def summarize(self, sums: Mapping) -> dict:
        raise NotImplementedError

    def score(self, metrics: Mapping) -> float:
        return float(metrics[self.score_name])

    def record(self) -> dict:
        return {"task": self.name, "classes": self.classes}

    # ---- the data (see the module's second table) ----
    def read_data(self, root, *, val_split: float | None = None, seed: int = 0):
        raise TaskError(f"archc cannot read {self.name} data yet")

    def read_eval_data(self, root):
        """``archc evaluate --data DIR``'s set: the validation split of DIR, or DIR itself."""
        raise TaskError(f"archc cannot read {self.name} data yet")

    def check_data(self, data, on_bad: str = "stop", log=None):
        return data

    def augmentation(self, recipe: str, shape: Sequence[int], crop_scale=None, flip=None):
        raise TaskError(f"archc cannot augment {self.name} data yet")

    def transform(self, shape: Sequence[int], pipeline: Mapping, augmentation=None) -> Callable:
        raise TaskError(f"archc cannot read {self.name} data yet")


def _weights(batch: Mapping, n: int):
    import jax.numpy as jnp
    w = batch.get("weight")
    return jnp.ones((n,), jnp.float32) if w is None else jnp.asarray(w, jnp.float32)


@dataclass
class Classification(Task):
    """Softmax cross-entropy (``label_smoothing`` in training); loss, top-1, top-5, per-class
    accuracy and the confusion matrix (rows: the true class, columns: the prediction)."""

    label_smoothing: float = 0.0

    def __post_init__(self):
        self.name, self.score_name, self.score_label = "classification", "accuracy", "acc"
        self.train_sums, self.train_metrics = ("correct", "count"), ("accuracy",)
        self.val_metrics = ("loss", "accuracy", "top5")

    def read_data(self, root, *, val_split=None, seed=0):
        """Class folders (runtime/data.py: ``DIR/train/<class>/*`` (+ ``DIR/val``) or ``DIR/<class>/*``)."""
        from .data import find_splits
        return find_splits(root, val_split, seed=seed)

    def read_eval_data(self, root):
        from .data import ImageFolder
        from .evaluation import eval_folder
        return ImageFolder.scan(eval_folder(root), classes=self.classes)

    def check_data(self, data, on_bad="stop", log=None):
        from .data import check_images
        return check_images(data, on_bad, log)

    def augmentation(self, recipe, shape, crop_scale=None, flip=None):
        from .data import choose_augmentation
        h, w, c = shape
        return choose_augmentation(recipe, h, w, c, crop_scale, flip)

    def transform(self, shape, pipeline, augmentation=None):
        """Training: a random-resized crop and flip (runtime/data.py's AugmentedImage); evaluation:
        the pipeline's resize and normalisation (runtime/pipeline.py's ``apply``)."""
        from . import pipeline as P
        from .data import AugmentedImage, ImageAndLabel
        h, w, c = shape
        if augmentation is None:
            spec = P.pipeline(dict(pipeline))
            return ImageAndLabel(lambda image, rng=None: P.apply(image, (h, w, c), spec))
        mean, std, bgr = P.statistics(pipeline, c)
        aug = augmentation
        return ImageAndLabel(AugmentedImage(h, w, c, tuple(mean.tolist()), tuple(std.tolist()),
                                            crop=aug.crop_scale is not None, flip=aug.flip,
                                            crop_scale=aug.crop_scale or (1.0, 1.0), bgr=bgr))

    def losses(self, outputs, batch, rng=None) -> dict:
        import jax
        import optax
        logits = outputs[self.outputs[0]]
        labels = jax.nn.one_hot(batch["label"], logits.shape[-1])
        if self.label_smoothing:
            labels = optax.smooth_labels(labels, self.label_smoothing)
        return {"cross_entropy": optax.softmax_cross_entropy(logits, labels).mean()}

    def metric_sums(self, outputs, batch, *, full: bool = True) -> dict:
        import jax.numpy as jnp
        import optax
        logits = outputs[self.outputs[0]].astype(jnp.float32)
        y = batch["label"]
        w = _weights(batch, y.shape[0])
        pred = jnp.argmax(logits, -1)
        sums = {"correct": jnp.sum((pred == y) * w), "count": jnp.sum(w)}
        if full:
            sums["loss"] = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y) * w)
            k = min(5, logits.shape[-1])
            # the true class is in the top k when fewer than k classes score higher (ties: stable order)
            true = jnp.take_along_axis(logits, y[:, None], -1)
            rank = jnp.sum(logits > true, -1) + jnp.sum((logits == true) & (jnp.arange(logits.shape[-1]) < y[:, None]), -1)
            sums["top5"] = jnp.sum((rank < k) * w)
            n = logits.shape[-1]
            # integer counts: float32 sums stop counting exactly at 2^24
            sums["confusion"] = jnp.zeros((n * n,), jnp.int32).at[y * n + pred].add((w > 0).astype(jnp.int32)).reshape(n, n)
        return sums

    def summarize(self, sums) -> dict:
        count = max(float(sums["count"]), 1e-12)
        out = {"accuracy": float(sums["correct"]) / count}
        if "loss" in sums:
            out["loss"] = float(sums["loss"]) / count
        if "top5" in sums:
            out["top5"] = float(sums["top5"]) / count
        if "confusion" in sums:
            cm = np.asarray(sums["confusion"], np.float64)
            per = cm.sum(1)
            out["per_class_accuracy"] = [None if per[i] == 0 else float(cm[i, i] / per[i]) for i in range(len(cm))]
            out["confusion"] = cm.astype(np.int64).tolist()
        return out


@dataclass
class Segmentation(Task):
    """Per-pixel class scores. ``loss``:

    * ``ce`` (default): cross-entropy, pixels labelled 255 ignored (torchvision's references:
      ``nn.functional.cross_entropy(out, target, ignore_index=255)``, the mean over the pixels
      that count);
    * ``weighted``: the U-Net paper's weighted cross-entropy: each pixel's cross-entropy times
      its weight (``batch["pixel_weight"]``, made on the host from the mask:
      runtime/segmentation_data.py's ``unet_weights``), over the number of pixels that count;
    * ``dice``: 1 - the mean over the classes present in the batch's targets of
      ``2 Σ p·g / (Σ p + Σ g)`` (p the softmax, g the one-hot target, over the pixels that count).

    A network with an output named ``aux`` (torchvision's auxiliary classifier) adds 0.5 × the
    same loss of it (``aux_<loss>``). Metrics: the confusion matrix of the pixels that count, and
    from it pixel accuracy, per-class IoU, mIoU and Dice as torchvision's references compute them
    (``ConfusionMatrix``: IoU = diag / (row sum + column sum - diag), mIoU their plain mean;
    Dice = 2 diag / (row sum + column sum))."""

    loss: str = "ce"

    LOSSES = ("ce", "weighted", "dice")
    AUX_WEIGHT = 0.5

    def __post_init__(self):
        if self.loss not in self.LOSSES:
            raise TaskError(f"--loss must be one of {', '.join(self.LOSSES)} for segmentation, not {self.loss!r}")
        self.name, self.score_name, self.score_label = "segmentation", "mIoU", "mIoU"
        self.train_sums, self.train_metrics = ("pixels", "confusion"), ("mIoU", "pixel_accuracy")
        self.val_metrics = ("loss", "mIoU", "pixel_accuracy", "dice")
        # a U-Net from scratch: SGD at 0.01 learns the background and little else for hundreds of
        # steps on the shapes set, AdamW at 1e-3 the shapes (docs/segmentation.md)
        self.default_optimizer = "adamw"

    @property
    def outputs(self) -> tuple:
        g = self.model.graph
        aux = [o for o in g.outputs[1:] if o == "aux" or o.startswith("aux.")]
        return (logits_node(g), *aux[:1])

    def head_nodes(self, param_nodes) -> list[str]:
        """The last layers with weights before each output: a new class count re-initialises
        the aux head's final conv with the main one's."""
        from .train import head_nodes
        return head_nodes(self.model, self.outputs)

    # ---- losses ----
    def _valid(self, y, n):
        return (y != IGNORE_INDEX) & (y >= 0) & (y < n)

    def pixel_loss(self, logits, batch):
        """The chosen loss of one output's logits (B, h, w, K), resized to the labels' size when
        it differs (bilinear, as torchvision upsamples its heads)."""
        import jax
        import jax.numpy as jnp
        import optax
        y = batch["label"]
        logits = logits.astype(jnp.float32)
        if logits.shape[1:3] != y.shape[1:3]:
            logits = jax.image.resize(logits, (*y.shape, logits.shape[-1]), "bilinear")
        n = logits.shape[-1]
        valid = self._valid(y, n)
        safe = jnp.where(valid, y, 0)
        count = jnp.maximum(jnp.sum(valid), 1)
        if self.loss == "dice":
            p = jax.nn.softmax(logits, -1) * valid[..., None]
            g = jax.nn.one_hot(safe, n) * valid[..., None]
            axes = tuple(range(p.ndim - 1))
            inter, total = jnp.sum(p * g, axes), jnp.sum(p + g, axes)
            present = jnp.sum(g, axes) > 0
            dice = 2 * inter / jnp.maximum(total, 1e-12)
            return 1.0 - jnp.sum(dice * present) / jnp.maximum(jnp.sum(present), 1)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe) * valid
        if self.loss == "weighted":
            ce = ce * batch["pixel_weight"]
        return jnp.sum(ce) / count

    def losses(self, outputs, batch, rng=None) -> dict:
        name = {"ce": "cross_entropy", "weighted": "weighted_cross_entropy", "dice": "dice"}[self.loss]
        out = {name: self.pixel_loss(outputs[self.outputs[0]], batch)}
        if len(self.outputs) > 1:
            out[f"aux_{name}"] = self.AUX_WEIGHT * self.pixel_loss(outputs[self.outputs[1]], batch)
        return out

    # ---- metrics ----
    def metric_sums(self, outputs, batch, *, full: bool = True) -> dict:
        import jax.numpy as jnp
        import optax
        logits = outputs[self.outputs[0]].astype(jnp.float32)
        y = batch["label"]
        n = logits.shape[-1]
        w = _weights(batch, y.shape[0]).reshape((-1,) + (1,) * (y.ndim - 1))
        # integer counts: float32 sums stop counting exactly at 2^24 pixels
        valid = (self._valid(y, n) & (w > 0)).astype(jnp.int32)
        safe = jnp.where(valid > 0, y, 0)
        pred = jnp.argmax(logits, -1)
        sums = {"pixels": jnp.sum(valid), "confusion": jnp.zeros((n * n,), jnp.int32)
                .at[(safe * n + pred).ravel()].add(valid.ravel()).reshape(n, n)}
        if full:
            sums["loss"] = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, safe) * valid)
        return sums

    def summarize(self, sums) -> dict:
        """The references' numbers from the confusion matrix (rows: the true class). A class
        that is neither in the targets nor predicted has no IoU (None) and is left out of the
        means: the references' plain mean would make mIoU NaN, which no best epoch can beat and
        no JSON reader accepts (mmsegmentation's nanmean)."""
        cm = np.asarray(sums["confusion"], np.float64)
        diag, rows, cols = np.diag(cm), cm.sum(1), cm.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = diag / (rows + cols - diag)
            dice = 2 * diag / (rows + cols)
        mean = lambda v: float(np.nanmean(v)) if not np.isnan(v).all() else 0.0  # noqa: E731 - no pixel counted: 0
        pixels = max(float(sums["pixels"]), 1e-12)
        loss = {"loss": float(sums["loss"]) / pixels} if "loss" in sums else {}
        listed = lambda v: [None if np.isnan(x) else float(x) for x in v]  # noqa: E731
        return {**loss, "pixel_accuracy": float(diag.sum() / max(cm.sum(), 1e-12)),
                "mIoU": mean(iou), "per_class_iou": listed(iou),
                "dice": mean(dice), "per_class_dice": listed(dice),
                "confusion": cm.astype(np.int64).tolist()}

    # ---- data (runtime/segmentation_data.py) ----
    def read_data(self, root, *, val_split=None, seed=0):
        from .segmentation_data import find_splits
        return find_splits(root, self.num_classes, val_split, seed)

    def read_eval_data(self, root):
        from .segmentation_data import eval_set
        return eval_set(root, self.num_classes, self.classes)

    def check_data(self, data, on_bad="stop", log=None):
        from .data import DataError
        from .segmentation_data import MaskFolder, check_masks
        if not isinstance(data, MaskFolder):
            raise DataError("segmentation reads image/mask folders (docs/segmentation.md), not in-memory "
                            "arrays; write them as DIR/train/images + DIR/train/masks")
        return check_masks(data, on_bad, log)

    def augmentation(self, recipe, shape, crop_scale=None, flip=None):
        from .segmentation_data import choose_augmentation
        return choose_augmentation(recipe, shape[0], shape[1], crop_scale, flip)

    def transform(self, shape, pipeline, augmentation=None):
        """Image and mask together (runtime/segmentation_data.py's MaskTransform): evaluation
        resizes both to the input (the mask with the nearest neighbour, the image with the
        pipeline's interpolation, as `archc segment` does), whatever resize the pipeline names;
        its normalisation applies."""
        from . import pipeline as P
        from .segmentation_data import MaskTransform
        h, w, c = shape
        mean, std, bgr = P.statistics(pipeline, c)
        aug = augmentation
        return MaskTransform(h, w, c, tuple(mean.tolist()), tuple(std.tolist()), bgr,
                             scale=None if aug is None else aug.scale, flip=bool(aug is not None and aug.flip),
                             classes=self.num_classes, border_weights=self.loss == "weighted",
                             interpolation=pipeline.get("interpolation", "bilinear"))


# --------------------------------------------------------------------------------------------
# The step, the state, evaluation, losses for a user
# --------------------------------------------------------------------------------------------
def forward_fn(task: Task, *, train: bool, dtype=None, remat: bool = False) -> Callable:
    """``(params, batch_stats, batch, rng) -> (outputs, new batch_stats)``: the task's forward
    (``task.apply``), in training mode (batch statistics, dropout) or not."""
    import jax

    def forward(params, batch_stats, batch, rng):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        out, stats = task.apply(variables, batch, train=train, rng=rng, dtype=dtype)
        return out, {**batch_stats, **stats}

    if remat:
        forward = jax.checkpoint(forward, policy=jax.checkpoint_policies.dots_saveable)
    return forward


def train_state(task: Task, optimizer, variables: Mapping, frozen: Sequence[str] = ()) -> dict:
    """The state :func:`make_train_step` advances: ``trainable`` params (all but the nodes in
    ``frozen``), ``frozen`` params, the optimizer state, ``batch_stats`` and the ``step``."""
    import jax
    import jax.numpy as jnp
    # copies: the step donates its state, and the caller's variables must outlive it
    copy = lambda tree: jax.tree_util.tree_map(lambda v: jnp.array(v, copy=True), tree)  # noqa: E731
    params, frozen = variables.get("params", {}), set(frozen)
    trainable = copy({n: leaves for n, leaves in params.items() if n not in frozen})
    return {"trainable": trainable, "frozen": copy({n: params[n] for n in params if n in frozen}),
            "opt": optimizer.init(trainable), "batch_stats": copy(dict(variables.get("batch_stats", {}))),
            "step": np.int32(0)}


def make_train_step(task: Task, optimizer, *, bn: str = "update", dtype=None, remat: bool = False,
                    seed: int = 0, loss_fn: Callable | None = None, sharding=None, jit: bool = True):
    """One optimizer update: ``step(state, batch) -> (state, metrics)``, jitted with the state
    donated. ``bn``: ``update`` (batch statistics in training mode) or ``frozen`` (inference
    mode, statistics kept); the statistics of frozen layers are kept either way. ``dtype``:
    ``"bfloat16"`` computes in bf16 with float32 parameters. ``loss_fn(outputs, batch, rng)``
    replaces the task's losses (a dict of scalars, or one scalar). ``sharding``: the
    replicated sharding of a data-parallel mesh (runtime/parallel.py); the batch comes sharded
    over its batch axis. ``metrics``: the losses, their ``loss`` total and the task's cheap
    metric sums, as device arrays (add them up; fetch them once per logging interval)."""
    import jax
    import optax
    train_mode = bn == "update"
    forward = forward_fn(task, train=train_mode, dtype=dtype, remat=remat)
    base_key = jax.random.PRNGKey(seed + 1)
    objective = loss_fn or task.losses

    def step(state, batch):
        rng = jax.random.fold_in(base_key, state["step"])
        frozen = state["frozen"]

        def loss_of(trainable):
            outputs, stats = forward({**frozen, **trainable}, state["batch_stats"], batch, rng)
            parts = objective(outputs, batch, rng)
            parts = parts if isinstance(parts, Mapping) else {"loss": parts}
            return sum(parts.values()), (outputs, stats, parts)

        (loss, (outputs, stats, parts)), grads = jax.value_and_grad(loss_of, has_aux=True)(state["trainable"])
        updates, opt_state = optimizer.update(grads, state["opt"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        old = state["batch_stats"]
        stats = {n: (old[n] if n in frozen else stats.get(n, old[n])) for n in old}
        metrics = {**task.metric_sums(outputs, batch, full=False), **parts, "loss": loss}
        return {"trainable": trainable, "frozen": frozen, "opt": opt_state, "batch_stats": stats,
                "step": state["step"] + 1}, metrics

    if not jit:
        return step
    kw = {} if sharding is None else {"out_shardings": (sharding, sharding)}
    return jax.jit(step, donate_argnums=(0,), **kw)


def make_eval_step(task: Task, *, dtype=None, sharding=None):
    """``eval_step(variables, batch) -> metric sums`` (the task's full metrics), jitted."""
    import jax
    forward = forward_fn(task, train=False, dtype=dtype)

    def eval_step(variables, batch):
        outputs, _ = forward(variables["params"], variables.get("batch_stats", {}), batch, None)
        return task.metric_sums(outputs, batch, full=True)

    kw = {} if sharding is None else {"out_shardings": sharding}
    return jax.jit(eval_step, **kw)


def add_sums(total: dict | None, sums: Mapping) -> dict:
    """Metric sums added on the device (no host sync)."""
    return dict(sums) if total is None else {k: total[k] + v for k, v in sums.items()}


def evaluate(task: Task, variables: Mapping, batches, *, dtype=None, eval_step=None, put=None) -> dict:
    """The task's metrics of ``variables`` over ``batches`` (dicts as in the module's table):
    sums added on the device, one transfer to the host at the end. ``put`` places each batch
    array (a data-parallel run shards them)."""
    from .parallel import to_host
    eval_step = eval_step or make_eval_step(task, dtype=dtype)
    total = None
    for batch in batches:
        if put is not None:
            batch = {k: put(v) for k, v in batch.items()}
        total = add_sums(total, eval_step(variables, batch))
    if total is None:
        raise TaskError("nothing to evaluate: the data set is empty")
    return task.summarize(to_host(total))


def losses(model, variables: Mapping, images, targets, *, task: str | Task | None = None,
           bn: str = "frozen", rng=None) -> dict:
    """The task's losses of ``model`` with ``variables`` on one batch. ``bn="batch"``: batch
    statistics (training mode), ``"frozen"``: the stored ones. For a loop of one's own.

    * classification: ``images`` (B, H, W, C) as the network takes them (preprocessed),
      ``targets`` class labels (B,);
    * segmentation: the same images, ``targets`` label maps (B, H, W);
    * detection: ``images`` as torchvision's detectors take them (a list of (H, W, 3) arrays in
      [0, 1], any sizes), ``targets`` one ``{"boxes": (N, 4) xyxy in that image's pixels,
      "labels": (N,)}`` per image; the network's input transform is applied (the boxes scaled
      with the images) and the losses have torchvision's keys (archc/detection/task.py).
      ``rng``: the samplers' key (None: a fixed one)."""
    import jax.numpy as jnp
    if bn not in ("frozen", "batch"):
        raise TaskError(f"bn is 'frozen' or 'batch', not {bn!r}")
    if not isinstance(task, Task):
        task = make_task(model, task)
    if task.name == "detection":
        from ..detection.task import detection_losses
        return detection_losses(task, variables, images, targets, bn=bn, rng=rng)
    forward = forward_fn(task, train=bn == "batch")
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(targets)}
    outputs, _ = forward(variables["params"], variables.get("batch_stats", {}), batch, rng)
    return task.losses(outputs, batch, rng)


__all__ = ["Task", "Classification", "Segmentation", "TaskError", "TASKS", "IGNORE_INDEX", "task_kind",
           "make_task", "make_train_step", "make_eval_step", "train_state", "evaluate", "losses",
           "add_sums", "forward_fn"]
