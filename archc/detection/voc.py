"""Pascal VOC detection folders, read into the COCO form of archc/detection/coco.py::

    ROOT/Annotations/<id>.xml   ROOT/JPEGImages/<id>.jpg   ROOT/ImageSets/Main/<split>.txt

Classes are VOC's 20 (archc/data/voc_21_classes.txt, the background first), labels 1..20 and
category ids 1..20 alike. VOC's corners are 1-based and inclusive: a box (xmin, ymin, xmax,
ymax) covers pixels xmin-1 .. xmax-1, so it becomes [xmin - 1, ymin - 1, xmax, ymax] in
archc's pixel coordinates. ``difficult`` objects become ``iscrowd`` regions: left out of
training and ignored by the evaluation, as VOC's own metric ignores them."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from ..runtime.data import DataError
from .declare import class_names
from .coco import DetectionData, from_coco_dict


def voc_root(path) -> Path:
    """``path`` itself, or the single VOC20xx folder inside a VOCdevkit."""
    root = Path(path)
    if (root / "Annotations").is_dir():
        return root
    inner = sorted(p for p in root.glob("VOC*") if (p / "Annotations").is_dir()) if root.is_dir() else []
    if len(inner) == 1:
        return inner[0]
    raise DataError(f"{root}: not a Pascal VOC folder (expected {root}/Annotations/*.xml, "
                    f"{root}/JPEGImages/ and {root}/ImageSets/Main/<split>.txt)")


def is_voc(path) -> bool:
    try:
        voc_root(path)
        return True
    except DataError:
        return False


def _text(node, tag: str, xml: Path):
    t = node.find(tag)
    if t is None or t.text is None:
        raise ValueError(f"no <{tag}>")
    return t.text.strip()


def voc_coco(root, split: str = "train") -> dict:
    """The COCO dict of a VOC split (absolute image paths; annotation ids 1.. in file order)."""
    root = voc_root(root)
    names = class_names("voc")[1:]
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if listing.is_file():
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    else:
        have = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem) \
            if (root / "ImageSets" / "Main").is_dir() else []
        raise DataError(f"{listing}: no such split list" + (f" (the splits are {', '.join(have)})" if have else ""))
    images, anns = [], []
    for i, stem in enumerate(ids, 1):
        xml = root / "Annotations" / f"{stem}.xml"
        image = {"id": i, "file_name": str(root / "JPEGImages" / f"{stem}.jpg"), "annotation_file": str(xml)}
        try:
            tree = ET.parse(xml).getroot()
            size = tree.find("size")
            if size is not None:
                image["width"], image["height"] = int(_text(size, "width", xml)), int(_text(size, "height", xml))
            fname = tree.find("filename")
            if fname is not None and fname.text and (root / "JPEGImages" / fname.text.strip()).is_file():
                image["file_name"] = str(root / "JPEGImages" / fname.text.strip())
            objects = tree.findall("object")
        except (OSError, ET.ParseError, ValueError) as e:
            raise DataError(f"{xml}: not a VOC annotation ({e})") from None
        images.append(image)
        for obj in objects:
            try:
                name = _text(obj, "name", xml)
                bb = obj.find("bndbox")
                if bb is None:
                    raise ValueError("no <bndbox>")
                x1, y1, x2, y2 = (float(_text(bb, t, xml)) for t in ("xmin", "ymin", "xmax", "ymax"))
                difficult = obj.find("difficult")
                crowd = int(difficult is not None and (difficult.text or "0").strip() == "1")
            except ValueError as e:
                raise DataError(f"{xml}: object {len(anns) + 1}: {e}") from None
            cat = names.index(name) + 1 if name in names else name
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat,
                         "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1], "area": (x2 - x1 + 1) * (y2 - y1 + 1),
                         "iscrowd": crowd})
    return {"images": images, "annotations": anns,
            "categories": [{"id": k, "name": n} for k, n in enumerate(names, 1)]}


def read_voc(root, split: str = "train", *, on_bad: str = "stop", log=None) -> DetectionData:
    """A checked DetectionData of a VOC split (see the module's docstring)."""
    root = voc_root(root)
    return from_coco_dict(voc_coco(root, split), f"{root} ({split})", root, on_bad=on_bad, log=log)


__all__ = ["read_voc", "voc_coco", "voc_root", "is_voc"]
