"""Segmentation's data: image/mask folders and Pascal VOC, checked, augmented image and mask together.

Layouts (docs/segmentation.md)::

    DIR/train/images/*.png|jpg   DIR/train/masks/<stem>.png     # + DIR/val/{images,masks}
    DIR/images/*                 DIR/masks/<stem>.png           # split by --val-split (default 0.2)
    DIR/JPEGImages/<id>.jpg      DIR/SegmentationClass/<id>.png # Pascal VOC, the ids in
                                 DIR/ImageSets/Segmentation/{train,val}.txt

A mask holds the class index of each pixel (a grey or palette PNG: VOC's palette PNGs read as
their indices); 255 marks pixels that count nowhere (VOC's object borders). Class names: the
lines of ``DIR/classes.txt``; else VOC's 21 names for the VOC layout; else ``class0``, ``class1``,
... as many as the network's outputs.

Training augmentation (torchvision's references/segmentation, at the network's input size): a
random resize of the input-sized image by 0.5-2x (``--augment auto``: 0.8-1.25x for inputs under
256 px), a random crop to the input (an image smaller
than it padded: pixels 0, mask 255), a horizontal flip; the image resampled bilinearly, the mask
with the nearest neighbour. Evaluation: image and mask resized to the input (mask: nearest).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import IMAGE_EXTENSIONS, DataError, handle_bad, read_image

IGNORE = 255
# torchvision's references/segmentation: RandomResize(0.5 x base, 2.0 x base)
SCALE_RANGE = (0.5, 2.0)
# ``--augment auto`` below this input side: a milder jitter (see choose_augmentation)
FULL_SCALE_SIDE, SMALL_SCALE_RANGE = 256, (0.8, 1.25)
# the U-Net paper's border weights (Sec. 3): w0 = 10, sigma = 5 px
W0, SIGMA = 10.0, 5.0
VOC_NAMES = Path(__file__).resolve().parent.parent / "data" / "voc_21_classes.txt"


# --------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------
@dataclass
class MaskFolder:
    """``(image path, mask path)`` pairs with the class names; nothing is decoded here (a
    missing mask is reported by :func:`check_masks`)."""

    root: str
    classes: list[str]
    samples: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, indices) -> "MaskFolder":
        return MaskFolder(self.root, self.classes, [self.samples[i] for i in indices])

    def without(self, paths) -> "MaskFolder":
        drop = set(paths)
        return MaskFolder(self.root, self.classes, [s for s in self.samples if s[0] not in drop])

    def example(self, i: int) -> dict:
        image_path, mask_path = self.samples[i]
        return {"image": read_image(image_path), "mask": read_mask(mask_path)}


def read_mask(path) -> np.ndarray:
    """A mask PNG as (H, W) uint8 class indices (palette PNGs: their indices), or a DataError
    naming the file."""
    im = read_image(path)
    if im.mode not in ("L", "P", "I", "I;16"):
        raise DataError(f"{path}: a mask must hold one class index per pixel (a grey or palette "
                        f"PNG), not a {im.mode} image")
    a = np.asarray(im)
    if a.max(initial=0) > 255:
        raise DataError(f"{path}: label {int(a.max())} is above 255")
    return a.astype(np.uint8)


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                  and f.suffix.lower() in IMAGE_EXTENSIONS)


def scan(folder, classes: Sequence[str]) -> MaskFolder:
    """``folder/images/*`` with their masks ``folder/masks/<stem>.png``."""
    folder = Path(folder)
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not images_dir.is_dir():
        raise DataError(f"{folder} has no images/ folder: expected {folder}/images/<name>.png with "
                        f"{folder}/masks/<name>.png")
    if not masks_dir.is_dir():
        raise DataError(f"{folder} has images/ but no masks/ folder ({folder}/masks/<name>.png: the class "
                        f"index of each pixel)")
    images = _images(images_dir)
    if not images:
        raise DataError(f"{images_dir} has no images")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() == ".png"}
    return MaskFolder(str(folder), list(classes),
                      [(str(p), str(masks.get(p.stem, masks_dir / f"{p.stem}.png"))) for p in images])


def _voc_split(root: Path, name: str, classes) -> MaskFolder | None:
    listing = root / "ImageSets" / "Segmentation" / f"{name}.txt"
    if not listing.is_file():
        return None
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    samples = []
    for i in ids:
        image = next((root / "JPEGImages" / f"{i}{ext}" for ext in (".jpg", ".jpeg", ".png")
                      if (root / "JPEGImages" / f"{i}{ext}").is_file()), root / "JPEGImages" / f"{i}.jpg")
        samples.append((str(image), str(root / "SegmentationClass" / f"{i}.png")))
    return MaskFolder(str(root), list(classes), samples)


def class_names(root, outputs: int, voc: bool = False) -> list[str]:
    """``root/classes.txt``'s lines; else VOC's 21 names (``voc``); else class0 … class<outputs - 1>."""
    for folder in (Path(root), Path(root).parent):
        path = folder / "classes.txt"
        if path.is_file():
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if not names:
                raise DataError(f"{path} names no class")
            return names
    if voc:
        return [line.strip() for line in VOC_NAMES.read_text().splitlines() if line.strip()]
    return [f"class{i}" for i in range(outputs)]


def _split(data: MaskFolder, fraction: float, seed: int):
    if not 0.0 < fraction < 1.0:
        raise DataError(f"the validation fraction must be between 0 and 1, got {fraction}")
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(data))
    n_val = min(max(int(round(fraction * len(data))), 1), len(data) - 1) if len(data) >= 2 else 0
    val = sorted(int(i) for i in order[:n_val])
    keep = set(val)
    return data.subset([i for i in range(len(data)) if i not in keep]), data.subset(val)


def is_voc(root: Path) -> bool:
    return (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir()


def find_splits(root, outputs: int, val_split: float | None = None, seed: int = 0):
    """``(train, val)`` mask folders for ``root`` (the module's layouts); ``val`` may be None."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    if is_voc(root):
        classes = class_names(root, outputs, voc=True)
        train = _voc_split(root, "train", classes)
        if train is None:
            raise DataError(f"{root} is a Pascal VOC folder without ImageSets/Segmentation/train.txt")
        return train, _voc_split(root, "val", classes)
    classes = class_names(root, outputs)
    if (root / "train").is_dir():
        train = scan(root / "train", classes)
        for name in ("val", "validation"):
            if (root / name).is_dir():
                return train, scan(root / name, classes)
        return _split(train, val_split, seed) if val_split else (train, None)
    if (root / "images").is_dir():
        data = scan(root, classes)
        fraction = 0.2 if val_split is None else val_split
        return _split(data, fraction, seed) if fraction else (data, None)
    raise DataError(f"{root}: no segmentation data: expected {root}/train/images/<name>.png with "
                    f"{root}/train/masks/<name>.png (+ {root}/val/...), {root}/images + {root}/masks, "
                    f"or Pascal VOC's JPEGImages/ and SegmentationClass/")


def eval_set(root, outputs: int, classes: Sequence[str] | None = None) -> MaskFolder:
    """``archc evaluate --data DIR``'s set: DIR/val (VOC: val.txt's ids), else DIR itself."""
    root = Path(root)
    if is_voc(root):
        data = _voc_split(root, "val", classes or class_names(root, outputs, voc=True))
        if data is None:
            raise DataError(f"{root} is a Pascal VOC folder without ImageSets/Segmentation/val.txt")
        return data
    names = list(classes) if classes else class_names(root, outputs)
    for name in ("val", "validation"):
        if (root / name).is_dir():
            return scan(root / name, names)
    return scan(root, names)


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------
def problems(data: MaskFolder) -> list[tuple[str, str]]:
    """``(image path, what is wrong)`` for every pair that cannot be used: no mask, an
    unreadable image or mask, a mask of another size than its image, a label that is neither a
    class (below ``len(data.classes)``) nor 255. Masks are decoded whole; images only their
    header."""
    from PIL import Image
    k, bad = len(data.classes), []
    for image_path, mask_path in data.samples:
        if not Path(mask_path).is_file():
            bad.append((image_path, f"no mask {mask_path}"))
            continue
        try:
            with Image.open(image_path) as im:
                size = im.size
        except (OSError, ValueError, SyntaxError) as e:
            bad.append((image_path, f"cannot read the image: {e}"))
            continue
        try:
            mask = read_mask(mask_path)
        except DataError as e:
            bad.append((image_path, str(e)))
            continue
        if (mask.shape[1], mask.shape[0]) != size:
            bad.append((image_path, f"its mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, the image "
                                    f"{size[0]}x{size[1]}"))
            continue
        labels = np.unique(mask)
        wrong = labels[(labels >= k) & (labels != IGNORE)]
        if wrong.size:
            bad.append((image_path, f"its mask {mask_path} holds label {int(wrong[0])}"
                                    f"{' (and ' + ', '.join(map(str, wrong[1:4].tolist())) + ')' if wrong.size > 1 else ''}"
                                    f", not a class (0..{k - 1}) nor 255 (ignored)"))
    return bad


def check_masks(data: MaskFolder, on_bad: str = "stop", log=None) -> MaskFolder:
    """``data`` with its bad pairs (:func:`problems`) handled as ``on_bad`` says: ``stop`` raises
    a DataError naming them; ``skip`` leaves them out, reported through ``log``."""
    bad = problems(data)
    if not bad:
        return data
    handle_bad(bad, on_bad, log, "unusable image/mask pair", "fix or remove")
    return data.without(p for p, _ in bad)


# --------------------------------------------------------------------------------------------
# Augmentation and the per-example transform
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Augmentation:
    """Segmentation's training augmentation: a random resize by ``scale`` (None: none) then a
    crop to the input, and a horizontal flip. ``crop_scale`` (classification's option) is None."""

    scale: tuple | None
    flip: bool
    why: str
    crop_scale: None = None

    def describe(self) -> str:
        resize = ("no resize" if self.scale is None else
                  f"random resize {self.scale[0]:g}-{self.scale[1]:g}x and crop to the input")
        return f"{resize}, {'horizontal flip' if self.flip else 'no flip'} ({self.why})"


def choose_augmentation(recipe: str, height: int, width: int, crop_scale=None,
                        flip: bool | None = None) -> Augmentation:
    """``imagenet`` (the photo recipe): torchvision's references' 0.5-2x at any size; ``auto``:
    that from ``FULL_SCALE_SIDE`` px up, a milder ``SMALL_SCALE_RANGE`` below (halving a 32 px
    input leaves objects a few pixels wide); ``none``: no resize. A flip unless ``--no-flip``."""
    from .data import AUGMENTATIONS
    if recipe not in AUGMENTATIONS:
        raise DataError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {recipe!r}")
    if crop_scale is not None:
        raise DataError("--crop-scale is classification's random-resized crop; segmentation resizes at "
                        "random and crops to the input (--augment none: neither)")
    given = "" if flip is None else f"; {'--flip' if flip else '--no-flip'} given"
    if recipe == "none":
        return Augmentation(None, bool(flip), "--augment none" + given)
    side = min(height, width)
    if recipe == "imagenet" or side >= FULL_SCALE_SIDE:
        return Augmentation(SCALE_RANGE, True if flip is None else bool(flip),
                            "torchvision's references/segmentation" + given)
    return Augmentation(SMALL_SCALE_RANGE, True if flip is None else bool(flip),
                        f"chosen for {height}x{width} inputs; --augment imagenet for the references' "
                        f"{SCALE_RANGE[0]:g}-{SCALE_RANGE[1]:g}x" + given)


@dataclass(frozen=True)
class MaskTransform:
    """``{"image": PIL, "mask": (H, W) uint8}`` -> ``{"image": (h, w, c) float32, "label": (h, w)
    int32}`` (+ ``"pixel_weight"`` (h, w) float32: the U-Net paper's weights, when
    ``border_weights``). ``rng`` None: evaluation (both resized to the input)."""

    height: int
    width: int
    channels: int
    mean: tuple
    std: tuple
    bgr: bool = False
    scale: tuple | None = None
    flip: bool = False
    classes: int = 0
    border_weights: bool = False
    interpolation: str = "bilinear"     # the image's, as the pipeline names it (archc segment resizes so)

    def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
        from PIL import Image

        from .pipeline import normalize, resample, to_array, to_mode
        h, w = self.height, self.width
        how = resample({"interpolation": self.interpolation})
        image = to_mode(example["image"], self.channels)
        mask = Image.fromarray(np.asarray(example["mask"], np.uint8))
        if rng is None or self.scale is None:
            a = to_array(image if image.size == (w, h) else image.resize((w, h), how), self.channels)
            m = np.asarray(mask if mask.size == (w, h) else mask.resize((w, h), Image.NEAREST))
        else:
            s = float(rng.uniform(*self.scale))
            sw, sh = max(1, int(round(w * s))), max(1, int(round(h * s)))
            a = to_array(image.resize((sw, sh), how), self.channels)
            m = np.asarray(mask.resize((sw, sh), Image.NEAREST))
            ph, pw = max(h, sh), max(w, sw)
            if (ph, pw) != (sh, sw):            # smaller than the input: padded, the pad ignored
                a = np.pad(a, ((0, ph - sh), (0, pw - sw), (0, 0)))
                m = np.pad(m, ((0, ph - sh), (0, pw - sw)), constant_values=IGNORE)
            y0, x0 = int(rng.integers(0, ph - h + 1)), int(rng.integers(0, pw - w + 1))
            a, m = a[y0:y0 + h, x0:x0 + w], m[y0:y0 + h, x0:x0 + w]
        if rng is not None and self.flip and rng.random() < 0.5:
            a, m = a[:, ::-1], m[:, ::-1]
        out = {"image": normalize(a, np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32), self.bgr),
               "label": np.ascontiguousarray(m, dtype=np.int32)}
        if self.border_weights:
            out["pixel_weight"] = unet_weights(out["label"], self.classes)
        return out


def unet_weights(label: np.ndarray, classes: int, w0: float = W0, sigma: float = SIGMA) -> np.ndarray:
    """The U-Net paper's weight map (Ronneberger et al. 2015, Eq. 2): ``w(x) = w_c(x) + w0 ·
    exp(-(d1(x) + d2(x))² / 2σ²)``. ``w_c``: class balance over this mask's counted pixels,
    ``n / (K · n_c)`` for a pixel of class c (n counted pixels, K classes present, n_c of class
    c): each present class weighs the same in total. d1, d2: the Euclidean distances to the
    nearest and second-nearest object, an object being a connected component (4-connected) of
    one class other than 0 (the background); the term is 0 with fewer than two objects.
    Ignored pixels (255, or not a class) weigh 0. (H, W) float32."""
    from scipy import ndimage
    label = np.asarray(label)
    valid = (label >= 0) & (label < classes) & (label != IGNORE)
    n = int(valid.sum())
    w = np.zeros(label.shape, np.float64)
    if n == 0:
        return w.astype(np.float32)
    present, counts = np.unique(label[valid], return_counts=True)
    for c, count in zip(present, counts):
        w[valid & (label == c)] = n / (len(present) * count)
    objects = []
    for c in present:
        if c == 0:
            continue
        comps, k = ndimage.label(label == c)
        objects += [comps == i for i in range(1, k + 1)]
    if len(objects) >= 2:
        d = np.sort(np.stack([ndimage.distance_transform_edt(~obj) for obj in objects]), axis=0)
        w += w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma ** 2))
    return (w * valid).astype(np.float32)


__all__ = ["MaskFolder", "MaskTransform", "Augmentation", "find_splits", "eval_set", "check_masks",
           "problems", "read_mask", "class_names", "choose_augmentation", "unet_weights", "IGNORE",
           "SCALE_RANGE"]
