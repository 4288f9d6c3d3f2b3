"""Detection data: the synthetic shapes set (archc.testing.detection_shapes), COCO JSON and Pascal VOC
folders read into boxes and contiguous labels, and bad data reported naming the file and the
annotation id (stop, or skip the image)."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from archc.detection.coco import read_coco
from archc.detection.data import load_detection_data
from archc.detection.voc import read_voc
from archc.runtime.data import DataError
from archc.testing.detection_shapes import shapes_coco, write_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return write_shapes(root, "train", images=24, seed=3, category_ids=(3, 7, 11))


def test_shapes_boxes_are_tight_and_some_images_empty(shapes):
    d = json.loads(shapes.read_text())
    assert {c["id"] for c in d["categories"]} == {3, 7, 11}
    with_boxes = {a["image_id"] for a in d["annotations"]}
    assert 0 < len(with_boxes) < len(d["images"])                   # some negatives
    per_image = np.bincount([a["image_id"] for a in d["annotations"]])
    assert per_image.max() >= 2                                     # several per image
    for a in d["annotations"][:10]:
        im = next(i for i in d["images"] if i["id"] == a["image_id"])
        px = np.asarray(Image.open(shapes.parent / "images" / im["file_name"])).astype(int)
        x, y, w, h = a["bbox"]
        bright = px.max(-1) >= 120                                   # shapes are drawn bright, background dark
        inside = bright[y:y + h, x:x + w]
        # every edge row/column of the box touches the shape; nothing of it lies just outside
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        ring = bright[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1].sum()
        assert ring == inside.sum()


def test_coco_labels_contiguous_and_back(shapes):
    data = read_coco(shapes)
    d = json.loads(shapes.read_text())
    assert data.category_ids == [3, 7, 11] and data.names == ["circle", "square", "triangle"]
    assert data.num_classes == 4
    assert len(data) == len(d["images"])
    by_image = {}
    for a in d["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for i, e in enumerate(data.examples):
        t = data.targets(i)
        anns = by_image.get(e["id"], [])
        assert t["boxes"].shape == (len(anns), 4) and t["labels"].shape == (len(anns),)
        for b, l, a in zip(t["boxes"], t["labels"], anns):
            x, y, w, h = a["bbox"]
            np.testing.assert_array_equal(b, [x, y, x + w, y + h])
            assert data.category_ids[l - 1] == a["category_id"]
    assert data.read(0).shape == (96, 96, 3) and data.read(0).dtype == np.uint8


def test_iscrowd_kept_for_evaluation_left_out_of_training(tmp_path):
    d = shapes_coco(tmp_path, "t", images=6, seed=0)
    crowd = d["annotations"][0]
    crowd["iscrowd"] = 1
    p = tmp_path / "t.json"
    p.write_text(json.dumps(d))
    data = read_coco(p)
    i = [e["id"] for e in data.examples].index(crowd["image_id"])
    n = sum(a["image_id"] == crowd["image_id"] for a in d["annotations"])
    assert len(data.targets(i)["boxes"]) == n - 1
    assert len(data.targets(i, crowd=True)["boxes"]) == n
    assert crowd in data.ground_truth()["annotations"]


def test_images_beside_the_json_or_in_images(tmp_path):
    d = shapes_coco(tmp_path / "a", "t", images=2, seed=0)
    (tmp_path / "a" / "t.json").write_text(json.dumps(d))
    assert len(read_coco(tmp_path / "a" / "t.json")) == 2            # a/images/<name>
    shutil.move(tmp_path / "a" / "images", tmp_path / "b")
    (tmp_path / "b" / "t.json").write_text(json.dumps(d))
    assert len(read_coco(tmp_path / "b" / "t.json")) == 2            # beside the JSON


def _broken(tmp_path):
    d = shapes_coco(tmp_path, "t", images=8, seed=5, empty_fraction=0.0)
    a = d["annotations"]
    x, y, w, h = a[0]["bbox"]
    a[0]["bbox"] = [x + w, y, -w, h]                                  # x2 <= x1
    a[1]["bbox"] = [90, 0, 20, 10]                                    # past the right edge of 96
    a[2]["category_id"] = 99                                          # not in categories
    (tmp_path / "images" / d["images"][-1]["file_name"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    p = tmp_path / "t.json"
    p.write_text(json.dumps(d))
    return p, d


def test_bad_data_stops_naming_file_and_annotation(tmp_path):
    p, d = _broken(tmp_path)
    with pytest.raises(DataError) as e:
        read_coco(p)
    msg = str(e.value)
    a = d["annotations"]
    for k, why in ((0, "x2 <= x1"), (1, "reaches outside the 96x96 image"), (2, "category_id 99 is not in")):
        img = next(i for i in d["images"] if i["id"] == a[k]["image_id"])
        assert f"{img['file_name']}: annotation {a[k]['id']}: " in msg and why in msg
    assert f"{d['images'][-1]['file_name']}: image {d['images'][-1]['id']}: " in msg
    assert "--on-bad-data skip" in msg


def test_bad_data_skipped_when_asked(tmp_path):
    p, d = _broken(tmp_path)
    said = []
    data = read_coco(p, on_bad="skip", log=said.append)
    a = d["annotations"]
    bad = {a[0]["image_id"], a[1]["image_id"], a[2]["image_id"], d["images"][-1]["id"]}
    assert {e["id"] for e in data.examples} == {i["id"] for i in d["images"]} - bad
    assert len(said) == 1 and f"skipping {len(bad)} images" in said[0]


def test_not_coco(tmp_path):
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(DataError, match="not a JSON file"):
        read_coco(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="has no 'categories'"):
        read_coco(tmp_path / "y.json")
    with pytest.raises(DataError, match="COCO JSON file .* or a Pascal VOC folder"):
        load_detection_data(tmp_path)


VOC_CLASSES = ["aeroplane", "bicycle", "bird"]


def _voc(tmp_path, d):
    """A VOC folder with the shapes of ``d`` as aeroplanes, bicycles and birds (1-based corners)."""
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    stems = []
    for im in d["images"]:
        stem = f"2012_{im['id']:06d}"
        stems.append(stem)
        Image.open(tmp_path / "images" / im["file_name"]).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
        objs = ""
        for a in d["annotations"]:
            if a["image_id"] == im["id"]:
                x, y, w, h = a["bbox"]
                objs += (f"<object><name>{VOC_CLASSES[a['category_id'] - 1]}</name><difficult>{int(a['id'] == 1)}"
                         f"</difficult><bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + w}</xmax>"
                         f"<ymax>{y + h}</ymax></bndbox></object>")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>{im['width']}</width>"
            f"<height>{im['height']}</height><depth>3</depth></size>{objs}</annotation>")
    (root / "ImageSets/Main/train.txt").write_text("\n".join(stems) + "\n")
    return root


def test_voc_folder(tmp_path):
    d = shapes_coco(tmp_path, "t", images=5, seed=2, empty_fraction=0.2)
    _voc(tmp_path, d)
    data = load_detection_data(tmp_path / "VOCdevkit", split="train")
    assert data.names[:3] == VOC_CLASSES and data.num_classes == 21
    for i, im in enumerate(d["images"]):
        anns = [a for a in d["annotations"] if a["image_id"] == im["id"]]
        t = data.targets(i, crowd=True)
        # VOC's inclusive 1-based corners come back as the shapes' own boxes
        np.testing.assert_array_equal(t["boxes"], np.array([[x, y, x + w, y + h] for x, y, w, h in
                                                             (a["bbox"] for a in anns)], np.float32).reshape(-1, 4))
        np.testing.assert_array_equal(t["labels"], [a["category_id"] for a in anns])
        # difficult (annotation 1 here) is a crowd region: out of training
        assert len(data.targets(i)["boxes"]) == len(anns) - any(a["id"] == 1 for a in anns)
    with pytest.raises(DataError, match="val.txt: no such split list .*the splits are train"):
        read_voc(tmp_path / "VOCdevkit", "val")


def test_voc_unknown_class_named(tmp_path):
    d = shapes_coco(tmp_path, "t", images=2, seed=2, empty_fraction=0.0)
    root = _voc(tmp_path, d)
    xml = sorted((root / "Annotations").iterdir())[0]
    xml.write_text(xml.read_text().replace("<name>", "<name>x", 1))
    with pytest.raises(DataError, match=rf"{xml.name}: annotation 1: category_id 'x\w+' is not in 'categories'"):
        read_voc(root)


# -- per-example dicts: the detector's own transform, as torchvision's in train mode ----------
from archc.detection.augment import recipe  # noqa: E402
from archc.detection.data import DetectionTransform, collate, most_boxes  # noqa: E402
from archc.detection.declare import DetectInput  # noqa: E402

SSD_INPUT = DetectInput(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), size_divisible=1, fixed_size=(64, 64))
RCNN_INPUT = DetectInput(min_size=48, max_size=80, size_divisible=32)


@pytest.mark.parametrize("spec,canvas,size", [(SSD_INPUT, (64, 64), (96, 96)), (RCNN_INPUT, (96, 96), (60, 100))])
def test_examples_equal_torchvision_transform(tmp_path, spec, canvas, size):
    import torch
    from torchvision.models.detection.transform import GeneralizedRCNNTransform
    path = write_shapes(tmp_path, "t", images=4, seed=1, size=size, empty_fraction=0.3)
    data = read_coco(path)
    ex = DetectionTransform(spec, canvas, most_boxes(data))
    tv = GeneralizedRCNNTransform(spec.min_size, spec.max_size, list(spec.mean), list(spec.std),
                                  size_divisible=spec.size_divisible,
                                  fixed_size=tuple(reversed(spec.fixed_size)) if spec.fixed_size else None)
    tv.train()
    batch = collate([ex(data.example(i)) for i in range(len(data))])
    assert batch["image"].shape == (4, *canvas, 3) and batch["boxes"].shape == (4, ex.max_boxes, 4)
    for i in range(len(data)):
        t = data.targets(i)
        image = torch.from_numpy(data.read(i).astype(np.float32) / 255).permute(2, 0, 1)
        il, (tt,) = tv([image], [{"boxes": torch.from_numpy(t["boxes"]), "labels": torch.from_numpy(t["labels"])}])
        h, w = il.image_sizes[0]
        assert tuple(batch["size"][i]) == (h, w)
        np.testing.assert_allclose(batch["image"][i, :h, :w], il.tensors[0, :, :h, :w].permute(1, 2, 0).numpy(),
                                   rtol=0, atol=1e-5)
        assert not batch["image"][i, h:].any() and not batch["image"][i, :, w:].any()
        n = int(batch["count"][i])
        assert n == len(t["boxes"])
        np.testing.assert_array_equal(batch["boxes"][i, :n], tt["boxes"].numpy())
        np.testing.assert_array_equal(batch["labels"][i, :n], t["labels"])
        assert not batch["boxes"][i, n:].any() and not batch["labels"][i, n:].any()


def test_examples_augmented_stay_in_the_image(tmp_path):
    data = read_coco(write_shapes(tmp_path, "t", images=6, seed=2))
    ex = DetectionTransform(SSD_INPUT, (64, 64), most_boxes(data), augment=recipe("ssd"))
    for i in range(len(data)):
        for seed in range(5):
            e = ex(data.example(i), np.random.default_rng(seed))
            b = e["boxes"][:e["count"]]
            assert (b >= 0).all() and (b <= 64).all() and (b[:, 2:] > b[:, :2]).all()
            assert e["image"].shape == (64, 64, 3)
