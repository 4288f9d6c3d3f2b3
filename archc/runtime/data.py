"""Classification's data for ``archc train``, and the loader every task's data goes through.

Classification's layout (class = sub-folder name, classes sorted by name)::

    DIR/train/<class>/*.png|jpg|...      DIR/val/<class>/*          # explicit split
    DIR/<class>/*                                                   # split by a fraction

A data set (of any task: runtime/tasks.py's table) has ``len()``, ``classes`` and
``example(i)``: one raw example as a dict (here ``{"image": PIL image, "label": int}``); a
task's transform turns it into a dict of fixed-shape arrays (:class:`ImageAndLabel` here), and
the :class:`Loader` batches those dicts. Images are decoded with Pillow as they are needed (a
dataset larger than memory works) by a grain pipeline, on ``workers`` threads, ``prefetch`` batches ahead. Everything
random is a pure function of ``(seed, epoch, sample index)``: the shuffle order of an epoch and
the crop/flip of a sample are the same in every run, every process and after ``--resume``,
whatever the thread scheduling.
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm")

class DataError(ValueError):
    """A problem with the user's data (missing folder, empty class, unreadable image).
    The CLI prints it and exits with status 2."""


# --------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------
@dataclass
class ImageFolder:
    """A list of (path, label) with the class names; nothing is decoded here."""

    root: str
    classes: list[str]
    samples: list[tuple[str, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @classmethod
    def scan(cls, root: str | os.PathLike, classes: Sequence[str] | None = None) -> "ImageFolder":
        """Scan ``root/<class>/*``. With ``classes`` (the training set's), labels follow that list,
        and a class folder not in it is an error; classes may be missing (a small validation set)."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist" if not root.exists()
                            else f"{root} is not a folder")
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not found:
            raise DataError(f"{root} has no class folders: expected {root}/<class>/<image> "
                            f"(or {root}/train/<class>/... and {root}/val/<class>/...)")
        if classes is None:
            classes = found
        else:
            classes = list(classes)
            extra = [c for c in found if c not in classes]
            if extra:
                raise DataError(f"{root} has class folders that the training set lacks: "
                                f"{', '.join(extra[:5])}")
        index = {c: i for i, c in enumerate(classes)}
        samples = []
        for name in found:
            files = sorted(f for f in (root / name).iterdir()
                           if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise DataError(f"class folder {root / name} has no images "
                                f"(looked for {', '.join(IMAGE_EXTENSIONS[:4])}, ...)")
            samples += [(str(f), index[name]) for f in files]
        return cls(str(root), list(classes), samples)

    def subset(self, indices) -> "ImageFolder":
        return ImageFolder(self.root, self.classes, [self.samples[i] for i in indices])

    def unreadable(self) -> list[tuple[str, str]]:
        """``(path, why)`` of every file Pillow cannot identify (its header is read, not the
        pixels: quick enough for every image of a large set)."""
        from PIL import Image, UnidentifiedImageError
        bad = []
        for path, _ in self.samples:
            try:
                with Image.open(path) as im:
                    im.size          # noqa: B018 - the header is parsed here
            except UnidentifiedImageError:
                bad.append((path, "not an image format Pillow knows, or a damaged file"))
            except (OSError, ValueError, SyntaxError) as e:
                bad.append((path, str(e)))
        return bad

    def without(self, paths) -> "ImageFolder":
        drop = set(paths)
        return ImageFolder(self.root, self.classes, [s for s in self.samples if s[0] not in drop])

    @property
    def labels(self) -> np.ndarray:
        return np.array([y for _, y in self.samples], np.int32)

    def read(self, i: int):
        return read_image(self.samples[i][0])

    def example(self, i: int) -> dict:
        return {"image": self.read(i), "label": self.samples[i][1]}


def read_image(path) -> "PIL.Image.Image":  # noqa: F821
    """A decoded PIL image, or a DataError naming the file."""
    from PIL import Image, UnidentifiedImageError
    try:
        with open(path, "rb") as f:
            data = f.read()
        im = Image.open(io.BytesIO(data))
        im.load()
        return im
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {path}: not an image format Pillow knows, "
                        f"or a damaged file") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


@dataclass
class ArrayData:
    """In-memory examples for the Python API: ``x`` uint8 (N, H, W, C) pixels 0..255 (or
    float in [0, 1]), ``y`` int labels; ``classes`` optional names."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str] | None = None

    def __post_init__(self):
        self.x, self.y = np.asarray(self.x), np.asarray(self.y, np.int32)
        if self.x.ndim == 3:
            self.x = self.x[..., None]
        if self.x.ndim != 4 or len(self.x) != len(self.y):
            raise DataError(f"expected x of shape (N, H, W, C) and N labels, got {self.x.shape} "
                            f"and {self.y.shape}")
        if self.classes is None:
            self.classes = [str(i) for i in range(int(self.y.max()) + 1 if len(self.y) else 0)]

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> np.ndarray:
        return self.y

    def subset(self, indices) -> "ArrayData":
        indices = np.asarray(indices, int)
        return ArrayData(self.x[indices], self.y[indices], self.classes)

    def read(self, i: int):
        from PIL import Image
        a = self.x[i]
        if a.dtype != np.uint8:
            a = np.clip(np.rint(a.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)

    def example(self, i: int) -> dict:
        return {"image": self.read(i), "label": int(self.y[i])}


def split(data, fraction: float, seed: int = 0):
    """Stratified, deterministic split: (train, val), about ``fraction`` of each class in val."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"the validation fraction must be between 0 and 1, got {fraction}")
    labels = data.labels
    rng = np.random.default_rng([seed, 0x5EED])
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val += list(rng.permutation(idx)[:n_val])
    val_set = set(int(i) for i in val)
    return (data.subset([i for i in range(len(data)) if i not in val_set]),
            data.subset(sorted(val_set)))


BAD_DATA = ("stop", "skip")


def check_images(data, on_bad: str = "stop", log=None):
    """``data`` with its unreadable images handled as ``on_bad`` says: ``stop`` raises a
    DataError naming them; ``skip`` leaves them out, reported through ``log``. In-memory data
    is returned as it is."""
    if not isinstance(data, ImageFolder):
        return data
    bad = data.unreadable()
    if not bad:
        return data
    handle_bad(bad, on_bad, log, "unreadable image", "remove or replace")
    return data.without(p for p, _ in bad)


def handle_bad(bad: list, on_bad: str, log, noun: str, fix: str) -> None:
    """--on-bad-data for files found bad (``(path, why)`` pairs): ``stop`` raises a DataError
    naming the first five and what would fix them; ``skip`` reports them through ``log`` (the
    caller leaves them out)."""
    n = len(bad)
    listing = "; ".join(f"{p}: {why}" for p, why in bad[:5]) + (f"; and {n - 5} more" if n > 5 else "")
    if on_bad == "stop":
        raise DataError(f"{n} {noun}{'s' * (n > 1)} ({listing}); {fix} {'them' if n > 1 else 'it'}, "
                        f"or pass --on-bad-data skip")
    if log is not None:
        log(f"skipping {n} {noun}{'s' * (n > 1)}: {listing}")


def find_splits(data_dir: str | os.PathLike, val_split: float | None = None, seed: int = 0):
    """``(train, val)`` image folders for ``data_dir``. ``DIR/train`` (+ ``DIR/val`` or
    ``DIR/validation``) when present; otherwise ``DIR/<class>`` split by ``val_split`` (default
    0.2; 0 for no validation set). ``val`` may be None."""
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    train_dir = root / "train"
    if train_dir.is_dir():
        train = ImageFolder.scan(train_dir)
        for name in ("val", "validation"):
            if (root / name).is_dir():
                return train, ImageFolder.scan(root / name, classes=train.classes)
        if val_split:
            return split(train, val_split, seed)
        return train, None
    if (root / "val").is_dir():
        raise DataError(f"{root} has val/ but no train/ folder")
    data = ImageFolder.scan(root)
    fraction = 0.2 if val_split is None else val_split
    if not fraction:
        return data, None
    return split(data, fraction, seed)


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------
# ImageNet's recipe (torchvision's RandomResizedCrop and RandomHorizontalFlip).
IMAGENET_CROP_SCALE = (0.08, 1.0)
# The smallest crop keeps about this many input pixels on a side: ImageNet's 8 % of the area at
# 224 px is (64/224)^2. A crop smaller than that, resized to the input, magnifies a few blurred
# pixels (an 8 % crop of a 32 px digit is 9 px wide).
MIN_CROP_SIDE = 64
# Even the smallest inputs keep a mild crop (scale and translation jitter up to ~1.1x).
MAX_CROP_LO = 0.8
# Natural photos are colour and (in the datasets people train on) at least this large; digits,
# text, CIFAR-sized thumbnails and grey scans are not flipped unless asked.
FLIP_MIN_SIDE = 128
AUGMENTATIONS = ("auto", "imagenet", "none", "hflip", "ssd")     # hflip, ssd: a detector's (detection/augment.py)


@dataclass(frozen=True)
class Augmentation:
    """What training images go through: a random-resized crop to ``crop_scale`` of the area
    (None: no crop) and a horizontal flip; ``why`` says how it was chosen."""

    crop_scale: tuple | None
    flip: bool
    why: str

    def describe(self) -> str:
        crop = ("no crop" if self.crop_scale is None else
                f"random-resized crop to {self.crop_scale[0]:.2g}-{self.crop_scale[1]:.2g} of the area")
        return f"{crop}, {'horizontal flip' if self.flip else 'no flip'} ({self.why})"


def choose_augmentation(recipe: str, height: int, width: int, channels: int,
                        crop_scale: Sequence | None = None, flip: bool | None = None) -> Augmentation:
    """The training augmentation for a network input of ``height x width x channels``.

    ``recipe='auto'``: the crop's smallest area is ``(MIN_CROP_SIDE / side)^2``, between
    ImageNet's 8 % (at 224 px and more) and ``MAX_CROP_LO`` (at 64 px and less); the flip only
    for colour inputs of ``FLIP_MIN_SIDE`` px or more. ``'imagenet'``: 8-100 % and a flip, at
    any size. ``'none'``: neither. ``crop_scale`` and ``flip``, when given, override the recipe."""
    if recipe not in ("auto", "imagenet", "none"):
        raise DataError(f"augmentation must be one of auto, imagenet, none, got {recipe!r}"
                        + (" (hflip and ssd are detection recipes)" if recipe in AUGMENTATIONS else ""))
    side = min(height, width)
    if recipe == "none":
        return Augmentation(None, False, "--augment none")
    if recipe == "imagenet":
        lo, auto_flip = IMAGENET_CROP_SCALE[0], True
        why = "ImageNet's recipe"
    else:
        lo = min(MAX_CROP_LO, max(IMAGENET_CROP_SCALE[0], (MIN_CROP_SIDE / side) ** 2))
        auto_flip = channels == 3 and side >= FLIP_MIN_SIDE
        kind = {1: "grey", 3: "colour"}.get(channels, f"{channels}-channel")
        why = f"chosen for {height}x{width} {kind} inputs; --augment imagenet for ImageNet's recipe"
    scale = tuple(float(v) for v in crop_scale) if crop_scale is not None else (round(lo, 2), 1.0)
    given = ([f"--crop-scale {scale[0]:g},{scale[1]:g}"] if crop_scale is not None else []) + \
        ([] if flip is None else ["--flip" if flip else "--no-flip"])
    if given:
        why += "; " + " ".join(given) + " given"
    return Augmentation(scale, auto_flip if flip is None else bool(flip), why)


@dataclass(frozen=True)
class AugmentedImage:
    """An image as training sees it: decode -> (augment) -> resize to (height, width) -> float32
    normalised HWC (the normalisation's statistics from runtime/pipeline.py).

    Training augmentation: random-resized crop (area fraction ``crop_scale``, aspect ratio
    ``crop_ratio``, as torchvision's RandomResizedCrop) and a horizontal flip with probability
    0.5. Evaluation: a plain resize to the input size."""

    height: int
    width: int
    channels: int
    mean: tuple = (0.0,)
    std: tuple = (1.0,)
    crop: bool = True
    flip: bool = True
    crop_scale: tuple = (0.08, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    bgr: bool = False                  # reverse the channels (Caffe-style weights)

    def _box(self, w: int, h: int, rng: np.random.Generator):
        area = w * h
        lo, hi = np.log(self.crop_ratio[0]), np.log(self.crop_ratio[1])
        for _ in range(10):
            target = area * rng.uniform(*self.crop_scale)
            ratio = float(np.exp(rng.uniform(lo, hi)))
            cw = int(round(np.sqrt(target * ratio)))
            ch = int(round(np.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                x0 = int(rng.integers(0, w - cw + 1))
                y0 = int(rng.integers(0, h - ch + 1))
                return (x0, y0, x0 + cw, y0 + ch)
        # fallback: the central crop with the ratio clamped to the range (as torchvision)
        in_ratio = w / h
        if in_ratio < self.crop_ratio[0]:
            cw, ch = w, int(round(w / self.crop_ratio[0]))
        elif in_ratio > self.crop_ratio[1]:
            ch, cw = h, int(round(h * self.crop_ratio[1]))
        else:
            cw, ch = w, h
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        return (x0, y0, x0 + cw, y0 + ch)

    def __call__(self, image, rng: np.random.Generator | None = None) -> np.ndarray:
        from PIL import Image

        from .pipeline import normalize, to_array, to_mode
        image = to_mode(image, self.channels)
        size = (self.width, self.height)
        if rng is not None and self.crop:
            box = self._box(image.width, image.height, rng)
            image = image.resize(size, Image.BILINEAR, box=box)
        elif image.size != size:        # pipeline.resize with resize="exact": what predict does
            image = image.resize(size, Image.BILINEAR)
        a = to_array(image, self.channels)
        if rng is not None and self.flip and rng.random() < 0.5:
            a = a[:, ::-1]
        return normalize(a, np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32), self.bgr)


@dataclass(frozen=True)
class ImageAndLabel:
    """Classification's per-example transform: ``{"image": PIL, "label": int}`` ->
    ``{"image": (H, W, C) float32, "label": () int32}``, the image through ``image`` (a
    :class:`AugmentedImage`, or any ``(PIL image, rng) -> array``)."""

    image: Callable

    def __call__(self, example: dict, rng: np.random.Generator | None = None) -> dict:
        return {"image": self.image(example["image"], rng), "label": np.int32(example["label"])}


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------
class Loader:
    """Batches of a dataset, decoded on demand by a grain pipeline: dicts of arrays with a
    leading batch axis, the ``transform``'s keys and ``weight`` (B,) float32 (0 for the padding
    of the last evaluation batch). ``transform(example, rng) -> dict of fixed-shape arrays``
    (``rng`` None: evaluation, no augmentation).

    ``train=True``: shuffled per epoch by ``(seed, epoch)``, augmented, incomplete last batch
    dropped (one compiled shape). ``train=False``: in order, no augmentation, the last batch
    padded to full size with ``mask`` 0. ``shard=(index, count)``: this process's slice of every
    global batch (multi-host data parallelism: ``(jax.process_index(), jax.process_count())``);
    ``batch`` is the global batch size. ``workers``: grain's reading threads (0: one when
    ``prefetch``, else none: decoding on the consuming thread); ``prefetch``: batches read ahead.
    """

    def __init__(self, data, transform: Callable, batch: int, *, train: bool, seed: int = 0,
                 workers: int = 0, prefetch: int = 2, shard: tuple[int, int] = (0, 1)):
        self.data, self.transform, self.batch = data, transform, int(batch)
        self.train, self.seed = train, int(seed)
        self.workers, self.prefetch = int(workers), int(prefetch)
        self.shard = shard
        if self.batch < 1:
            raise DataError(f"batch size must be positive, got {batch}")
        if self.batch % shard[1]:
            raise DataError(f"batch {batch} does not split over {shard[1]} processes")
        self.per_process = self.batch // shard[1]

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch if self.train else -(-n // self.batch)

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.data)
        if not self.train:
            return np.arange(n)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(n)

    def _local(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's samples of ``epoch`` in reading order, and their masks: its slice of
        every global batch (the last evaluation batch padded with masked repeats)."""
        order, size = self.order(epoch), len(self) * self.batch
        mask = (np.arange(size) < len(order)).astype(np.float32)
        ids = np.concatenate([order, np.full(max(0, size - len(order)), order[-1])])[:size]
        lo = self.shard[0] * self.per_process
        pick = lambda a: a.reshape(len(self), self.batch)[:, lo:lo + self.per_process].ravel()  # noqa: E731
        return pick(ids), pick(mask)

    def _sample(self, epoch: int, i: int) -> dict:
        rng = np.random.default_rng([self.seed, int(epoch), int(i), 1]) if self.train else None
        return self.transform(self.data.example(int(i)), rng)

    def dataset(self, epoch: int, start: int = 0):
        """``epoch``'s batches from batch ``start`` as a grain ``IterDataset`` (samples read on
        grain's threads)."""
        import grain
        ids, mask = self._local(epoch)

        def example(k: int) -> dict:
            return {**self._sample(epoch, int(ids[k])), "weight": np.float32(mask[k])}

        # --workers 0 with a prefetch: one reading thread, as decoding ahead of the step needs
        threads = self.workers or (1 if self.prefetch > 0 else 0)
        options = grain.ReadOptions(num_threads=threads,
                                    prefetch_buffer_size=max(self.prefetch, 1) if threads else 0)
        # a thread reads a whole batch (random access): fewer hand-offs than one per sample
        return (grain.MapDataset.range(len(ids)).map(example).batch(self.per_process)[start:]
                .to_iter_dataset(options))

    def iterator(self, epoch: int, state: dict | None = None):
        """A checkpointable iterator over ``epoch``'s batches (``get_state()``/``set_state()``),
        from ``state`` when given."""
        it = iter(self.dataset(epoch))
        if state is not None:
            it.set_state(state)
        return it

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict]:
        """The batches of ``epoch`` (0-based), from batch number ``start``."""
        return iter(self.dataset(epoch, start))
