"""COCO box AP of a detector with pycocotools (the field's standard), per-class AP and a
precision-recall plot.

    metrics = evaluate_detector(model, variables, read_coco("val.json"))
    metrics["AP"], metrics["AP50"], metrics["per_class_AP"]

The detections are archc.detect's (archc/detection/api.py: the network's own input transform
and post-processing, its detect(...) thresholds as torchvision evaluates), in each original
image's pixels; xyxy becomes COCO's [x, y, w, h] and the labels 1..K the data's category ids.
pycocotools then runs on exactly that results list: ``COCO.loadRes``, ``COCOeval(…, "bbox")``,
``evaluate``, ``accumulate``, ``summarize``."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from .coco import DetectionData, coco_results

# COCOeval.stats, in its order
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class DetectionEvalError(ValueError):
    """A detector and a data set that do not fit together (CLI: one line, exit status 2)."""


def _coco(d: dict):
    from pycocotools.coco import COCO
    c = COCO()
    c.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):
        c.createIndex()
    return c


def coco_eval(ground_truth: dict, results: list[dict]):
    """pycocotools' bbox evaluation of ``results`` (COCO's results list) against the COCO dict
    ``ground_truth``. Returns (metrics {AP, AP50, …}, the COCOeval after ``summarize``)."""
    from pycocotools.cocoeval import COCOeval
    gt = _coco(ground_truth)
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = gt.loadRes(results)
        else:       # loadRes refuses an empty list; no detections scores 0 (-1 where there is no truth)
            dt = _coco({"images": ground_truth["images"], "categories": ground_truth["categories"], "annotations": []})
        E = COCOeval(gt, dt, "bbox")
        E.evaluate()
        E.accumulate()
        E.summarize()
    return {k: float(v) for k, v in zip(METRICS, E.stats)}, E


def per_class_ap(E) -> list[float | None]:
    """AP@[.5:.95] of each category (COCOeval's order, the sorted category ids), all areas,
    100 detections: the mean of the interpolated precisions pycocotools' AP averages, over this
    category alone; None where the category has no ground truth."""
    p = E.eval["precision"][:, :, :, 0, -1]            # (IoU thresholds, recall points, categories)
    out = []
    for k in range(p.shape[2]):
        v = p[:, :, k]
        v = v[v > -1]
        out.append(float(v.mean()) if v.size else None)
    return out


def plot_precision_recall(E, names: list[str], path, title: str = "") -> Path:
    """Precision against recall at IoU 0.5 for each category and for their mean (pycocotools'
    101-point interpolated curves, all areas, 100 detections), and the mean at IoU 0.75."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    rec = E.params.recThrs
    iou = list(np.round(E.params.iouThrs, 2))
    prec = E.eval["precision"][:, :, :, 0, -1]
    fig = Figure(figsize=(7, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)

    def mean_curve(t):
        p = prec[t]
        ok = (p > -1).all(0)
        return p[:, ok].mean(1) if ok.any() else None

    if len(names) <= 20:
        for k, name in enumerate(names):
            p = prec[iou.index(0.5), :, k]
            if (p > -1).all():
                ax.plot(rec, p, lw=1.2, alpha=0.8, label=f"{name} (AP50 {p.mean():.3f})")
    for t, style in ((0.5, "-"), (0.75, "--")):
        m = mean_curve(iou.index(t))
        if m is not None:
            ax.plot(rec, m, "k" + style, lw=2.2, label=f"mean, IoU {t} (AP{int(t * 100)} {m.mean():.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.set_title(title or "precision-recall (pycocotools, all areas, 100 detections)")
    ax.legend(loc="lower left", fontsize=8)
    from ..runtime.evaluation import save_figure
    return save_figure(fig, path)


def label_count(det) -> int:
    """The labels a detector's outputs range over, background included (0..C-1)."""
    if hasattr(det, "classes"):
        return int(det.classes)
    return int(det.grid.classes) + 1                 # YOLO v1: no background output


def category_map(det, data: DetectionData, recorded: list[int] | None = None) -> tuple[list[int], str]:
    """The category id of each label 1..C-1, and how it was chosen: the ids the weights record
    (``archc train``), else the data's in id order when the counts agree, else label = id for a
    network with COCO's 91 labels (torchvision's COCO checkpoints)."""
    c = label_count(det)
    if recorded is not None:
        if len(recorded) != c - 1:
            raise DetectionEvalError(f"the weights record {len(recorded)} category ids for a network of {c - 1} classes")
        missing = sorted(set(recorded) - set(data.category_ids))
        if missing:
            raise DetectionEvalError(f"the weights were trained on category ids {missing} that {data.source} "
                                     f"does not list (its ids: {data.category_ids})")
        return [int(i) for i in recorded], "as the weights record"
    if c == data.num_classes:
        return data.category_ids, "labels 1..K in the order of the data's category ids"
    if det.decl.names == "coco" and c == 91 and all(1 <= i <= 90 for i in data.category_ids):
        return list(range(1, 91)), "COCO's 91 labels are its category ids (torchvision)"
    raise DetectionEvalError(f"the network has {c - 1} classes (and the background), {data.source} has "
                             f"{len(data.category_ids)} categories: load it with classes={data.num_classes}")


def detections(model, variables, data: DetectionData, *, batch: int = 8, **thresholds) -> list[dict]:
    """archc.detect on every image of ``data``, ``batch`` images a call."""
    from .api import detect
    out = []
    for s in range(0, len(data), batch):
        ims = [data.read(i) for i in range(s, min(s + batch, len(data)))]
        out += detect(model, variables, ims, **thresholds)
    return out


def evaluate_detector(model, variables, data: DetectionData, *, batch: int = 8, category_ids: list | None = None,
                      results_path=None, pr_plot=None, **thresholds) -> dict:
    """COCO metrics of ``variables`` on ``data`` (see the module's docstring). ``results_path``:
    also write the results JSON that pycocotools evaluated; ``pr_plot``: draw the
    precision-recall curves there."""
    import json

    from .api import detector_for
    det = detector_for(model, **thresholds)
    ids, how = category_map(det, data, category_ids)
    dets = detections(model, variables, data, batch=batch, **thresholds)
    for i, d in enumerate(dets):
        bad = [int(l) for l in d["labels"] if not 1 <= int(l) <= len(ids)]
        if bad:
            raise DetectionEvalError(f"{data.examples[i]['path']}: the network gave label {bad[0]}, outside 1..{len(ids)}")
    results = coco_results(data, dets, ids)
    gt = data.ground_truth()
    metrics, E = coco_eval(gt, results)
    names = [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    per = per_class_ap(E)
    out = {"task": "detection", "data": data.source, "images": len(data),
           "boxes": sum(len(v) for v in data.annotations.values()), "detections": len(results),
           "category_map": how, **metrics, "classes": names, "per_class_AP": per}
    if results_path is not None:
        Path(results_path).write_text(json.dumps(results))
        out["results_json"] = str(results_path)
    if pr_plot is not None:
        out["pr_png"] = str(plot_precision_recall(E, names, pr_plot, f"{Path(data.source).name}: AP {metrics['AP']:.3f}, "
                                                 f"AP50 {metrics['AP50']:.3f}"))
    return out


def render(metrics: dict) -> str:
    """The metrics as a user reads them."""
    m = metrics
    lines = [f"{m['data']}: {m['images']} images, {m['boxes']} boxes, {len(m['classes'])} categories, "
             f"{m['detections']} detections",
             "  " + "  ".join(f"{k} {m[k]:.4f}" for k in METRICS[:6]),
             "  " + "  ".join(f"{k} {m[k]:.4f}" for k in METRICS[6:])]
    width = max((len(n) for n in m["classes"]), default=4)
    pairs = [(n, a) for n, a in zip(m["classes"], m["per_class_AP"])]
    if pairs:
        lines.append("  per-class AP" + (" (the 10 worst)" if len(pairs) > 20 else "") + ":")
        if len(pairs) > 20:
            pairs = sorted(pairs, key=lambda t: -1 if t[1] is None else t[1])[:10]
        lines += [f"    {n:<{width}}  {'-' if a is None else f'{a:.4f}'}" for n, a in pairs]
    return "\n".join(lines)


__all__ = ["evaluate_detector", "coco_eval", "per_class_ap", "plot_precision_recall", "category_map", "detections",
           "render", "METRICS", "DetectionEvalError"]
