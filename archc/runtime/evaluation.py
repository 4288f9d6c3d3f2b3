"""``archc evaluate`` and ``archc.evaluate``: a task's metrics of some weights on a data set.

    metrics = archc.evaluate("net.arch", "runs/net/best.safetensors", "shapes/val")

The numbers are the run's validation metrics: the same task (runtime/tasks.py), the same
evaluation step, the same input pipeline (the one the weights record, runtime/pipeline.py).
Classification: ``loss``, ``accuracy`` (top-1), ``top5``, ``per_class_accuracy`` and the
``confusion`` matrix (rows: the true class; columns: the prediction), drawn by
:func:`plot_confusion`. Segmentation (image/mask folders, docs/segmentation.md): ``loss``,
``mIoU``, ``pixel_accuracy``, ``per_class_iou``, ``dice`` (the mean), ``per_class_dice`` and the
pixels' ``confusion`` matrix, as torchvision's references compute them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class EvaluateError(ValueError):
    """Bad input to evaluate: weights, data or options (CLI: one line, exit status 2)."""


def eval_folder(data) -> Path:
    """``DIR/val`` (or ``validation``) when there is one, else ``DIR``."""
    root = Path(data)
    for name in ("val", "validation"):
        if (root / name).is_dir():
            return root / name
    return root


def evaluate(model, variables, data, *, batch: int = 32, task: str | None = None, preprocess=None,
             metadata: dict | None = None, detection: dict | None = None) -> dict:
    """The task's metrics of ``variables`` (a dict, or the path of a weights file whose record
    says the network, pipeline and class names) on ``data``: an image folder, or for a detector
    a COCO JSON file or VOC folder (``detection``: evaluate_detector's options, results_path,
    pr_plot, score_thresh…). ``model``: a Model, a spec, or None (the network the weights file
    records)."""
    from .data import DataError, Loader
    from .model import Model
    from .predict import check_variables, declared_preprocess, preprocess_spec
    from .record import graph_for_weights, read_record, recorded_classes, recorded_task
    from .tasks import TaskError, evaluate as run_evaluation, make_task
    from .variables_io import load_variables
    meta = dict(metadata or {})
    if isinstance(variables, (str, Path)):
        path = Path(variables)
        if not path.is_file():
            raise EvaluateError(f"{path}: no such weights file")
        meta = {**read_record(path), **meta}
        try:
            variables = load_variables(path, as_numpy=True)
        except Exception as e:      # noqa: BLE001 - safetensors' own errors
            raise EvaluateError(f"{path}: not a variables file written by archc ({e})") from None
    if not isinstance(model, Model):
        model = Model(graph_for_weights(model, meta))
    check_variables(model, variables)
    names = recorded_classes(meta)
    from .tasks import task_kind
    if (task or recorded_task(meta) or task_kind(model)) == "detection":
        # COCO AP over the whole set (pycocotools), not sums of batches
        return _evaluate_detector(model, variables, data, meta, batch=batch, **(detection or {}))
    try:
        t = make_task(model, task or recorded_task(meta), classes=names)
        if names is None:
            t.classes = names = [str(i) for i in range(t.num_classes)]
        # the task's evaluation set and transform: what its training validated on
        dataset = t.read_eval_data(data)
        dataset = t.check_data(dataset, "stop")
        spec = preprocess_spec(preprocess, meta, declared_preprocess(model), name=model.name)
        transform = t.transform(tuple(model.input_shape), spec)
    except (DataError, TaskError) as e:
        raise EvaluateError(str(e)) from None
    loader = Loader(dataset, transform, batch, train=False, prefetch=0)
    metrics = run_evaluation(t, variables, loader.epoch(0))
    return {"task": t.name, "data": str(dataset.root), "images": len(dataset), "classes": names, **metrics}


def _evaluate_detector(model, variables, data, meta, *, batch: int, split: str = "val", on_bad: str = "stop",
                       **options) -> dict:
    """COCO AP with pycocotools (archc/detection/evaluate.py)."""
    from ..detection.data import load_detection_data
    from ..detection.evaluate import evaluate_detector
    from .record import recorded_category_ids
    data = load_detection_data(data, split=split, on_bad=on_bad)
    return evaluate_detector(model, variables, data, batch=batch, category_ids=recorded_category_ids(meta), **options)


def plot_confusion(metrics: dict, path) -> Path:
    """The confusion matrix as a picture: counts in each cell, the rows normalised for the
    colour (so a rare class reads as well as a common one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    cm = np.asarray(metrics["confusion"], np.float64)
    names = metrics.get("classes") or [str(i) for i in range(len(cm))]
    k = len(cm)
    side = min(14.0, 2.5 + 0.45 * k)
    fig = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 30:
        ax.set_xticks(range(k), names, rotation=45, ha="right")
        ax.set_yticks(range(k), names)
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if "accuracy" in metrics:
        ax.set_title(f"top-1 {metrics['accuracy']:.4f}, {int(cm.sum())} images")
    else:           # segmentation: pixels
        ax.set_title(f"pixel accuracy {metrics['pixel_accuracy']:.4f}, {int(cm.sum())} pixels")
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    """``fig`` laid out and written to ``path`` whole (a temporary file renamed): a reader never
    sees half a PNG."""
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path


def render(metrics: dict) -> str:
    """The metrics as a user reads them."""
    if metrics.get("task") == "segmentation":
        return render_segmentation(metrics)
    lines = [f"{metrics['data']}: {metrics['images']} images, {len(metrics['classes'])} classes",
             f"  loss {metrics['loss']:.4f}  top-1 {metrics['accuracy']:.4f}  top-5 {metrics['top5']:.4f}"]
    per = metrics.get("per_class_accuracy") or []
    width = max((len(n) for n in metrics["classes"]), default=4)
    worst = sorted((a, n) for n, a in zip(metrics["classes"], per) if a is not None)
    shown = worst if len(worst) <= 20 else worst[:10]
    if shown:
        lines.append("  per class" + (" (the 10 worst)" if len(worst) > 20 else "") + ":")
        lines += [f"    {n:<{width}}  {a:.4f}" for a, n in sorted(shown, key=lambda t: metrics["classes"].index(t[1]))]
    return "\n".join(lines)


def render_segmentation(metrics: dict) -> str:
    fmt = lambda v: "-" if v is None or v != v else f"{v:.4f}"  # noqa: E731 - None/NaN: no pixel of it
    lines = [f"{metrics['data']}: {metrics['images']} images, {len(metrics['classes'])} classes",
             f"  loss {metrics['loss']:.4f}  mIoU {fmt(metrics['mIoU'])}  pixel accuracy "
             f"{metrics['pixel_accuracy']:.4f}  Dice {fmt(metrics['dice'])}",
             "  per class: IoU, Dice"]
    width = max((len(n) for n in metrics["classes"]), default=4)
    for n, iou, dice in zip(metrics["classes"], metrics["per_class_iou"], metrics["per_class_dice"]):
        lines.append(f"    {n:<{width}}  {fmt(iou)}  {fmt(dice)}")
    return "\n".join(lines)


__all__ = ["evaluate", "plot_confusion", "render", "render_segmentation", "EvaluateError"]
