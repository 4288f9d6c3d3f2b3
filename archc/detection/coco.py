"""Detection data in COCO's JSON form: reading and checking it, the map between COCO category
ids and contiguous labels, and writing detections as COCO results.

    data = read_coco("shapes/train.json")          # checks every box, category and image
    data.names, data.category_ids                  # label k (1..K) is category_ids[k - 1]
    data.targets(i)                                # boxes (N, 4) xyxy in pixels, labels (N,)

Image paths (``file_name``) are relative to the JSON's folder or to an ``images/`` folder beside
it (absolute paths are taken as they are). Labels are 1..K in the order of the category ids (0
is the background, as torchvision's); an image with no boxes is a valid negative. ``iscrowd``
annotations stay in the ground truth for evaluation (pycocotools ignores their regions) and are
left out of training targets, as torchvision's references do.

Bad input (a box with x2 <= x1 or y2 <= y1 or reaching outside its image, a category id that
``categories`` does not list, an image that does not decode or is missing) is reported naming
the file and the annotation or image id; ``on_bad="stop"`` raises a DataError, ``"skip"`` leaves
the image out (its other boxes would otherwise teach the network that an object is background)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..runtime.data import BAD_DATA, DataError


@dataclass
class DetectionData:
    """Images with their boxes. ``examples``: one COCO image dict each, with ``path`` (resolved)
    added; ``annotations[image id]``: its annotation dicts (checked). ``categories``: COCO's
    category dicts, sorted by id (label k is ``categories[k - 1]``)."""
    source: str
    categories: list
    examples: list
    annotations: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)     # (file, id, why) of the problems found
    skipped_images: int = 0                         # the images left out for them

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories]

    @property
    def num_classes(self) -> int:
        """K + 1: the background and the K categories (a detector's ``classes``)."""
        return len(self.categories) + 1

    def label_of(self, category_id: int) -> int:
        return self.category_ids.index(int(category_id)) + 1

    def targets(self, i: int, *, crowd: bool = False) -> dict:
        """Image ``i``'s boxes (N, 4) float32 xyxy in its pixels and labels (N,) int32 (1..K),
        ``iscrowd`` ones left out unless ``crowd``."""
        image = self.examples[i]
        anns = [a for a in self.annotations.get(image["id"], ()) if crowd or not a.get("iscrowd", 0)]
        boxes = np.array([xywh_to_xyxy(a["bbox"]) for a in anns], np.float32).reshape(-1, 4)
        labels = np.array([self.label_of(a["category_id"]) for a in anns], np.int32)
        return {"boxes": boxes, "labels": labels}

    @property
    def classes(self) -> list[str]:
        """The category names, label 1 first (the data-set interface of runtime/tasks.py)."""
        return self.names

    def example(self, i: int) -> dict:
        """Image ``i`` for training: ``{"image": (H, W, 3) uint8, "boxes", "labels", "path"}``
        (``iscrowd`` boxes left out)."""
        return {"image": self.read(i), **self.targets(i), "path": self.examples[i]["path"]}

    def read(self, i: int) -> np.ndarray:
        """Image ``i`` as (H, W, 3) uint8 RGB."""
        return read_image(self.examples[i]["path"])

    def subset(self, indices) -> "DetectionData":
        ex = [self.examples[i] for i in indices]
        keep = {e["id"] for e in ex}
        return DetectionData(self.source, self.categories, ex,
                             {k: v for k, v in self.annotations.items() if k in keep}, list(self.skipped),
                             self.skipped_images)

    def ground_truth(self) -> dict:
        """The COCO dict of these images and their annotations (ids as the source gives them),
        for pycocotools."""
        images = [{k: v for k, v in e.items() if k not in ("path", "annotation_file")} for e in self.examples]
        anns = [a for e in self.examples for a in self.annotations.get(e["id"], ())]
        return {"images": images, "annotations": anns, "categories": self.categories}


def xywh_to_xyxy(b) -> list:
    x, y, w, h = (float(v) for v in b)
    return [x, y, x + w, y + h]


def read_image(path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {path}: not an image format Pillow knows, or a damaged file") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def _image_size(path: Path) -> tuple[int, int] | str:
    """(height, width) from the image's header, or why it cannot be read."""
    from PIL import Image, UnidentifiedImageError
    if not path.is_file():
        return "no such file"
    try:
        with Image.open(path) as im:
            w, h = im.size
            return h, w
    except UnidentifiedImageError:
        return "not an image format Pillow knows, or a damaged file"
    except (OSError, ValueError, SyntaxError) as e:
        return str(e)


def _resolve(root: Path, name: str) -> Path:
    p = Path(name)
    if p.is_absolute():
        return p
    for base in (root, root / "images"):
        if (base / p).is_file():
            return base / p
    return root / "images" / p if (root / "images").is_dir() else root / p


def _need(d: dict, key: str, source: str, what: str):
    if key not in d:
        raise DataError(f"{source}: {what} has no '{key}'")
    return d[key]


def box_problem(bbox, height: int, width: int) -> str | None:
    """Why a COCO ``[x, y, w, h]`` box is bad in an image of (height, width), or None."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return f"bbox {bbox!r} is not [x, y, width, height]"
    if not all(np.isfinite([x, y, w, h])):
        return f"bbox {bbox!r} is not finite"
    if w <= 0 or h <= 0:
        return f"bbox {list(bbox)} has x2 <= x1 or y2 <= y1 (width {w:g}, height {h:g})"
    if x < 0 or y < 0 or x + w > width or y + h > height:
        return f"bbox {list(bbox)} (xyxy [{x:g}, {y:g}, {x + w:g}, {y + h:g}]) reaches outside the {width}x{height} image"
    return None


def from_coco_dict(d: dict, source: str, root: Path, *, on_bad: str = "stop", log=None,
                   check_images: bool = True) -> DetectionData:
    """A checked DetectionData from a COCO dict whose relative file names are under ``root``."""
    if on_bad not in BAD_DATA:
        raise DataError(f"on_bad must be one of {', '.join(BAD_DATA)}, not {on_bad!r}")
    if not isinstance(d, dict):
        raise DataError(f"{source}: not a COCO file (the top level is not an object)")
    images = _need(d, "images", source, "the file")
    cats = sorted(_need(d, "categories", source, "the file"), key=lambda c: int(_need(c, "id", source, "a category")))
    if not cats:
        raise DataError(f"{source}: 'categories' is empty")
    ids = [int(c["id"]) for c in cats]
    if len(set(ids)) != len(ids):
        raise DataError(f"{source}: category ids repeat: {sorted(ids)}")
    for c in cats:
        _need(c, "name", source, f"category {c['id']}")
    known = set(ids)
    problems: list[tuple[str, str, str]] = []       # (file, "annotation 12" / "image 3", why)
    bad_images: set = set()
    examples, by_id = [], {}
    for im in images:
        iid = _need(im, "id", source, "an image")
        name = _need(im, "file_name", source, f"image {iid}")
        if iid in by_id:
            raise DataError(f"{source}: image id {iid} appears twice")
        path = _resolve(root, name)
        e = {**im, "path": str(path)}
        if check_images:
            size = _image_size(path)
            if isinstance(size, str):
                problems.append((str(path), f"image {iid}", size))
                bad_images.add(iid)
            elif "height" in im and "width" in im and (int(im["height"]), int(im["width"])) != size:
                problems.append((str(path), f"image {iid}", f"the file is {size[1]}x{size[0]}, the JSON says "
                                 f"{im['width']}x{im['height']}"))
                bad_images.add(iid)
            elif "height" not in im or "width" not in im:
                e["height"], e["width"] = size
        elif "height" not in im or "width" not in im:
            raise DataError(f"{source}: image {iid} has no height/width")
        by_id[iid] = e
        examples.append(e)
    annotations: dict = {}
    for a in d.get("annotations", []):
        aid = a.get("id", "?")
        iid = a.get("image_id")
        if iid not in by_id:
            problems.append((source, f"annotation {aid}", f"image_id {iid!r} is not in 'images'"))
            continue
        e = by_id[iid]
        why = None
        if a.get("category_id") not in known:
            why = f"category_id {a.get('category_id')!r} is not in 'categories' (ids {sorted(known)})"
        elif "bbox" not in a:
            why = "no bbox"
        elif iid not in bad_images:
            why = box_problem(a["bbox"], int(e["height"]), int(e["width"]))
        if why is not None:
            problems.append((e.get("annotation_file", e["path"]), f"annotation {aid}", why))
            bad_images.add(iid)
            continue
        annotations.setdefault(iid, []).append(a)
    examples = [e for e in examples if e["id"] not in bad_images]
    annotations = {k: v for k, v in annotations.items() if k not in bad_images}
    data = DetectionData(source, [dict(c) for c in cats], examples, annotations, problems, len(bad_images))
    check_problems(data, on_bad, log)
    if not examples:
        raise DataError(f"{source}: no images" + (" left after skipping the bad ones" if problems else ""))
    return data


def check_problems(data: DetectionData, on_bad: str = "stop", log=None) -> DetectionData:
    """What reading found wrong in ``data`` (its ``skipped``: the images are already left out):
    ``stop`` raises a DataError naming the files and ids; ``skip`` reports them through ``log``."""
    problems = data.skipped
    if not problems:
        return data
    shown = "; ".join(f"{f}: {what}: {why}" for f, what, why in problems[:5])
    more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    n, k = len(problems), data.skipped_images
    if on_bad == "stop":
        raise DataError(f"{data.source}: {n} problem{'s' * (n > 1)} in the data ({shown}{more}); fix "
                        f"{'them' if n > 1 else 'it'}, or pass --on-bad-data skip to leave those images out")
    if log is not None:
        log(f"{data.source}: skipping {k} image{'s' * (k != 1)} with problems: {shown}{more}")
    return data


def read_coco(path, *, on_bad: str = "stop", log=None, check_images: bool = True) -> DetectionData:
    """Read and check a COCO JSON file (see the module's docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a JSON file ({e})") from None
    return from_coco_dict(d, str(path), path.parent, on_bad=on_bad, log=log, check_images=check_images)


def coco_results(data: DetectionData, detections: list[dict], category_ids: list[int]) -> list[dict]:
    """COCO's results list for ``detections`` (one dict per image of ``data``: boxes xyxy in that
    image's pixels, scores, labels 1..K): ``{"image_id", "category_id", "bbox": [x, y, w, h],
    "score"}``; label k becomes ``category_ids[k - 1]``."""
    out = []
    for e, det in zip(data.examples, detections):
        for b, s, l in zip(np.asarray(det["boxes"], np.float64), np.asarray(det["scores"], np.float64), det["labels"]):
            x1, y1, x2, y2 = (float(v) for v in b)
            out.append({"image_id": e["id"], "category_id": int(category_ids[int(l) - 1]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)})
    return out


__all__ = ["DetectionData", "read_coco", "from_coco_dict", "check_problems", "coco_results", "box_problem", "read_image",
           "xywh_to_xyxy"]
