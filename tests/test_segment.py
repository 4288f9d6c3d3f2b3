"""archc.segment and `archc segment`: masks at each image's own size, overlap-tile inference for
networks whose unpadded convolutions shrink the output (the paper's U-Net), overlay pictures;
bad input reported in one line with exit status 2.

Reference points: torch's ``F.interpolate(bilinear, align_corners=False)`` for the scores resized
back; the network run directly (``model.apply``) on a mirrored input for the whole-image path;
for the tiles, a network without pools (exactly translation-equivariant), on which tiled and
whole-image outputs must agree however the tiles fall, and the paper's U-Net, on which they must
agree where one tile holds the whole image."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import archc
from archc.cli import main
from archc.runtime import tiling
from archc.runtime.overlay import draw_overlay, palette, present
from archc.runtime.record import inference_metadata
from archc.runtime.segment import SegmentError, resize_scores

ROOT = Path(__file__).resolve().parent.parent

# A same-padding U-Net in small: output at the input's size, even sizes accepted.
SAME = """\
param classes = 3
input 64x64x3
block double(c) = conv3(c) bn relu conv3(c) bn relu
enc1: double(8)
enc2: maxpool2 double(16)
dec1: deconv(8) concat(@enc1, identity) double(8)
head: conv1(classes)
"""
# Unpadded convolutions and no pools: output = input - 6, equal under any shift.
VALID = """\
param classes = 4
input 20x20x3
let conv3 = conv3(p="valid")
body: conv3(8) relu conv3(8) relu conv3(8) relu
head: conv1(classes)
"""

# Strided convs, the scores resized to the input (as torchvision's segmenters): any size runs.
RESIZED = """\
param classes = 3
input 64x64x3
body: conv3(8, s=2) relu conv3(8, s=2) relu conv1(classes)
out: upsample(size=@input, mode="bilinear")
"""


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    from PIL import Image
    from skimage import data
    d = tmp_path_factory.mktemp("seg")
    out = {"dir": d}
    for name, text in (("same", SAME), ("valid", VALID), ("resized", RESIZED)):
        spec = d / f"{name}.arch"
        spec.write_text(text)
        model = archc.load(str(spec))
        variables = model.init(seed=1)
        weights = d / f"{name}.safetensors"
        archc.save_variables(variables, weights)
        out[name] = dict(spec=spec, model=model, variables=variables, weights=weights)
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(d / f"{name}.png")
    (d / "notes.png").write_text("not a picture")
    archc.save_variables(archc.load("resnet18", classes=3).init(seed=0), d / "resnet18.safetensors")
    return out


def normalized(image: np.ndarray) -> np.ndarray:
    """The normalisation of a network that declares none, with weights that record none: torch's."""
    from archc.runtime import pipeline as P
    from PIL import Image
    mean, std, bgr = P.statistics(P.pipeline("torch"), 3)
    return P.normalize(P.to_array(Image.fromarray(image), 3), mean, std, bgr)


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------
def test_unet_geometry_from_its_size_analysis():
    import jax
    unet = archc.load("unet")
    g = tiling.geometry(unet)
    assert g.margin == (92, 92) and g.tile == (572, 572) and g.out == (388, 388) == unet.output_shape[:2]
    other = tiling.geometry(unet, (588, 572))           # another tile size: its output traced by jax
    y = jax.eval_shape(unet.apply_fn, jax.eval_shape(lambda: unet.init(seed=0)),
                       jax.ShapeDtypeStruct((1, 588, 572, 1), np.float32))
    assert other.out == tuple(y.shape[1:3]) == (404, 388) and other.margin == (92, 92)
    assert g.fitting(0, 300 + 184) == 492 and not g.accepts(0, 484)
    with pytest.raises(tiling.GeometryError, match="a tile height of 573 does not give an output centred in it; "
                                                  "it does at 572, 588"):
        tiling.geometry(unet, (573, 572))


def test_origins_cover_the_image_exactly():
    for extent, out in ((700, 388), (388, 388), (100, 388), (777, 14), (15, 14)):
        starts = tiling.origins(extent, out)
        covered = np.zeros(max(extent, out), int)
        for s in starts:
            covered[s:s + out] += 1
        assert (covered[:extent] >= 1).all() and starts[-1] + out >= extent and len(starts) == -(-extent // out)
        assert extent < out or starts[-1] + out == extent          # the last tile ends at the edge


def test_not_a_segmenter(nets):
    with pytest.raises(SegmentError, match="resnet18 is a classifier .*: use archc predict"):
        archc.segment(archc.load("resnet18", classes=3), str(nets["dir"] / "resnet18.safetensors"),
                      np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SegmentError, match="cannot also be resized"):
        archc.segment(nets["same"]["model"], nets["same"]["variables"], np.zeros((8, 8, 3), np.uint8),
                      tile=True, size="input")


# ---------------------------------------------------------------------------------------------
# Tiled, whole and resized
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(50, 77), (14, 14), (9, 30), (120, 41)])
def test_tiles_equal_the_whole_image_on_a_shift_equivariant_network(nets, shape, highest_precision):
    """Overlap tiles of 20 in, 14 out (many, the last ones moved back to the edge, batches of 4
    padded) stitch to the same scores as one run on the whole mirrored image."""
    net = nets["valid"]
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape + (3,), dtype=np.uint8)
    tiled = archc.segment(net["model"], net["variables"], image, tile=True, scores=True)[0]
    whole = archc.segment(net["model"], net["variables"], image, tile=False, scores=True)[0]
    assert tiled["how"] == "tiled" and whole["how"] == "whole"
    assert tiled["tiles"] == -(-shape[0] // 14) * -(-shape[1] // 14)
    assert tiled["scores"].shape == shape + (4,) and tiled["mask"].shape == shape
    np.testing.assert_allclose(tiled["scores"], whole["scores"], rtol=1e-5, atol=1e-5)
    # the whole-image path against the network run by hand on the image mirrored by 3
    x = np.pad(normalized(image), ((3, 3), (3, 3), (0, 0)), mode="reflect")
    direct = np.asarray(net["model"].apply(net["variables"], x[None]))[0]
    np.testing.assert_allclose(whole["scores"], direct, rtol=1e-5, atol=1e-5)
    assert (whole["mask"] == np.argmax(direct, -1)).all()
    auto = archc.segment(net["model"], net["variables"], image)[0]
    assert auto["how"] == ("tiled" if max(shape) > 14 else "whole")


@pytest.mark.parametrize("res,shape", [(252, (68, 50)), pytest.param(572, (388, 300), marks=pytest.mark.slow)])
def test_unet_tiled_equals_untiled_where_one_tile_holds_the_image(res, shape):
    """The paper's U-Net with tiles of 252 (68 out; the slow tier: its 572, 388 out) on an image
    of 68x50 (388x300): one tile (the image mirrored to fill it) and one run at the smallest size
    it accepts around the image (252x236; 572x492) give the same scores."""
    unet = archc.load("unet", res=res)
    variables = unet.init(seed=0)
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    tiled = archc.segment(unet, variables, image, tile=True, scores=True)[0]
    whole = archc.segment(unet, variables, image, tile=False, scores=True)[0]
    assert (tiled["how"], tiled["tiles"], whole["how"]) == ("tiled", 1, "whole")
    assert tiled["scores"].shape == shape + (2,)
    np.testing.assert_allclose(tiled["scores"], whole["scores"], rtol=1e-6, atol=1e-6)
    assert (tiled["mask"] == whole["mask"]).all()


def test_whole_image_mirrored_up_to_a_size_the_network_accepts(nets, highest_precision):
    net = nets["same"]
    image = np.random.default_rng(3).integers(0, 256, (51, 77, 3), dtype=np.uint8)
    r = archc.segment(net["model"], net["variables"], image, scores=True)[0]
    assert r["how"] == "whole" and r["mask"].shape == (51, 77)
    x = np.pad(normalized(image), ((0, 1), (0, 1), (0, 0)), mode="reflect")     # 52x78: even sizes
    direct = np.asarray(net["model"].apply(net["variables"], x[None]))[0][:51, :77]
    np.testing.assert_allclose(r["scores"], direct, rtol=1e-5, atol=1e-5)


def test_an_output_resized_to_the_input_runs_at_any_size(nets, highest_precision):
    """torchvision's way: strided layers whose grid does not tile 51x77, scores upsampled to the
    input; the image runs as it is, unpadded."""
    net = nets["resized"]
    image = np.random.default_rng(6).integers(0, 256, (51, 77, 3), dtype=np.uint8)
    r = archc.segment(net["model"], net["variables"], image, scores=True)[0]
    direct = np.asarray(net["model"].apply(net["variables"], normalized(image)[None]))[0]
    assert r["how"] == "whole" and r["scores"].shape == (51, 77, 3)
    np.testing.assert_allclose(r["scores"], direct, rtol=1e-5, atol=1e-5)


def test_resized_to_the_input_and_scores_resized_back_as_torch(nets, highest_precision):
    import torch
    import torch.nn.functional as F
    from PIL import Image
    net = nets["same"]
    image = np.random.default_rng(4).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    r = archc.segment(net["model"], net["variables"], image, size="input", scores=True)[0]
    assert r["how"] == "resized" and r["scores"].shape == (90, 130, 3)
    small = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR))
    y = np.asarray(net["model"].apply(net["variables"], normalized(small)[None]))[0]
    ref = F.interpolate(torch.from_numpy(y.copy()).permute(2, 0, 1)[None], size=(90, 130), mode="bilinear",
                        align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(r["scores"], ref, rtol=1e-5, atol=1e-5)
    assert (r["mask"] == np.argmax(r["scores"], -1)).all()


@pytest.mark.parametrize("size", [(37, 50), (20, 9), (64, 64)])
def test_resize_scores_equals_torch_interpolate(size):
    import torch
    import torch.nn.functional as F
    y = np.random.default_rng(5).normal(size=(24, 31, 5)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(y.copy()).permute(2, 0, 1)[None], size=size, mode="bilinear",
                        align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(resize_scores(y, size), ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Names and pictures
# ---------------------------------------------------------------------------------------------
def test_class_names_recorded_voc_or_numbered(nets):
    from archc.runtime.segment import class_names
    meta = inference_metadata(nets["same"]["model"], spec=None, params={}, preprocess=None,
                              classes=["sky", "road", "car"], task="segmentation")
    assert class_names(meta, 3) == ["sky", "road", "car"]
    assert class_names(meta, 4) == ["class 0", "class 1", "class 2", "class 3"]
    voc = class_names(None, 21)
    assert voc[0] == "__background__" and voc[15] == "person" and len(voc) == 21
    r = archc.segment(nets["same"]["model"], nets["same"]["variables"], np.zeros((16, 16, 3), np.uint8),
                      metadata=meta)[0]
    assert r["names"] == ["sky", "road", "car"] and {c["name"] for c in r["classes"]} <= {"sky", "road", "car"}


def test_overlay_blends_the_voc_palette():
    # Pascal VOC's colour map (the devkit's labelcolormap): background, aeroplane, bicycle, bird, boat, …
    assert [tuple(c) for c in palette()[:6]] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128),
                                                 (128, 0, 128)]
    assert len({tuple(c) for c in palette()}) == 256
    photo = np.full((60, 80, 3), 200, np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    mask[:, 40:] = 2
    im = np.asarray(draw_overlay(photo, mask, ["a", "b", "c"], alpha=0.5, legend=False)).astype(int)
    assert tuple(im[30, 10]) == (100, 100, 100) and tuple(im[30, 70]) == (100, 164, 100)
    assert tuple(im[30, 39]) == (0, 0, 0)                 # the boundary in the class's full colour
    shares = present(mask, ["a", "b", "c"])
    assert [(s["index"], s["name"], s["fraction"]) for s in shares] == [(0, "a", 0.5), (2, "c", 0.5)]
    # the legend goes where it hides the fewest boundaries: here, away from the top-left square
    photo = np.full((200, 300, 3), 200, np.uint8)
    mask = np.zeros((200, 300), np.uint8)
    mask[10:60, 10:60] = 1
    plain = np.asarray(draw_overlay(photo, mask, ["a", "b"], legend=False))
    drawn = np.asarray(draw_overlay(photo, mask, ["a", "b"]))
    changed = np.argwhere((drawn != plain).any(-1))
    assert len(changed) and changed[:, 1].min() > 150 and changed[:, 0].max() < 100     # the top-right corner


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def test_cli_writes_masks_and_overlays_at_the_photos_sizes(nets, capsys):
    from PIL import Image
    d, net = nets["dir"], nets["same"]
    photos = [d / "astronaut.png", d / "coffee.png"]
    rc = main(["segment", str(net["spec"]), "--weights", str(net["weights"]), *map(str, photos),
               "--out", str(d / "out"), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(captured.out)
    api = archc.segment(net["model"], str(net["weights"]), [str(p) for p in photos])
    for photo, entry, r in zip(photos, report, api):
        with Image.open(photo) as im:
            size = (im.height, im.width)
        assert entry["size"] == list(size) and entry["how"] == "whole"
        assert entry["mask"] == str(d / "out" / f"{photo.stem}_mask.png")
        assert entry["overlay"] == str(d / "out" / f"{photo.stem}_overlay.png")
        with Image.open(entry["mask"]) as im:
            assert im.mode == "L"
            mask = np.asarray(im)
        with Image.open(entry["overlay"]) as im:
            assert (im.height, im.width) == size and im.mode == "RGB"
        assert mask.shape == size and mask.max() < 3 and (mask == r["mask"]).all()
        counts = np.bincount(mask.ravel(), minlength=3) / mask.size
        assert {c["index"]: c["fraction"] for c in entry["classes"]} == pytest.approx(
            {k: f for k, f in enumerate(counts) if f > 0}, abs=1e-12)
    rc = main(["segment", str(net["spec"]), "--weights", str(net["weights"]), str(photos[1])])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith(f"{photos[1]}: 600x400 (whole)") and "class 0" in out


def test_cli_without_a_spec_reads_the_record(nets, capsys, tmp_path):
    net = nets["same"]
    weights = tmp_path / "trained.safetensors"
    archc.save_variables(net["variables"], weights, metadata=inference_metadata(
        net["model"], spec=str(net["spec"]), params={}, preprocess="unit", classes=["sky", "road", "car"],
        task="segmentation"))
    rc = main(["segment", "--weights", str(weights), str(nets["dir"] / "coffee.png"), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    names = {c["name"] for c in json.loads(captured.out)[0]["classes"]}
    assert names and names <= {"sky", "road", "car"}


@pytest.mark.parametrize("case,expect", [
    ("not an image", "notes.png: not a readable image"),
    ("a classifier", "resnet18 is a classifier"),
    ("a refused tile", "a tile height of 5 does not give an output centred in it; it does at 7"),
    ("tile and resize", "cannot also be resized"),
    ("one name twice", "two images are named coffee"),
    ("other classes", "these weights have 3 classes"),
    ("a bad alpha", "--alpha must be in [0, 1]"),
])
def test_cli_bad_input_one_line_exit_2(nets, capsys, case, expect):
    d = nets["dir"]
    same, valid = nets["same"], nets["valid"]
    photo = str(d / "coffee.png")
    (d / "again").mkdir(exist_ok=True)
    (d / "again" / "coffee.png").write_bytes((d / "coffee.png").read_bytes())
    args = {
        "not an image": [str(same["spec"]), "--weights", str(same["weights"]), str(d / "notes.png")],
        "a classifier": ["resnet18", "--param", "classes=3", "--weights", str(d / "resnet18.safetensors"), photo],
        "a refused tile": [str(valid["spec"]), "--weights", str(valid["weights"]), "--tile-size", "5x20", photo],
        "tile and resize": [str(same["spec"]), "--weights", str(same["weights"]), "--tile", "--size", "input", photo],
        "one name twice": [str(same["spec"]), "--weights", str(same["weights"]), photo, str(d / "again" / "coffee.png"),
                           "--out", str(d / "twice")],
        "other classes": [str(same["spec"]), "--param", "classes=5", "--weights", str(same["weights"]), photo],
        "a bad alpha": [str(same["spec"]), "--weights", str(same["weights"]), "--alpha", "1.5", photo],
    }[case]
    rc = main(["segment", *args])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and expect in err and err.count("\n") == 1, err


@pytest.mark.parametrize("width", [16, pytest.param(64, marks=pytest.mark.slow)])
def test_cli_unet_full_size_mask_for_a_700x500_photo(tmp_path, width):
    """The paper's U-Net (572 in, 388 out; its layers at a quarter of the channels, and in the
    slow tier as published) on a 700x500 photo: 2x2 overlap tiles, a 700x500 mask."""
    from PIL import Image
    from skimage import data
    photo = tmp_path / "photo.png"
    Image.fromarray(np.asarray(Image.fromarray(data.astronaut()).resize((700, 500)))).save(photo)
    weights = tmp_path / "unet.safetensors"
    archc.save_variables(archc.load("unet", width=width).init(seed=0), weights)
    r = subprocess.run([sys.executable, "-m", "archc", "segment", "unet", "--param", f"width={width}", "--weights",
                        str(weights), str(photo), "--out", str(tmp_path / "out"), "--json"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    entry = json.loads(r.stdout)[0]
    assert (entry["how"], entry["tiles"], entry["size"]) == ("tiled", 4, [500, 700])
    with Image.open(entry["mask"]) as im:
        assert (im.width, im.height) == (700, 500) and np.asarray(im).max() < 2
    with Image.open(entry["overlay"]) as im:
        assert (im.width, im.height) == (700, 500)


@pytest.mark.slow
@pytest.mark.usefixtures("highest_precision")
def test_a_torchvision_segmenter_through_segment_gives_its_out(tmp_path, capsys):
    """torchvision's lraspp_mobilenet_v3_large (random weights, seed 0), imported by `archc
    import`, segments a 197x263 photo (sides no multiple of its stride) at the photo's own size:
    the scores equal torchvision's `out` on the photo normalised as its transforms do (ImageNet
    mean and std), within 1e-4 of their largest magnitude; the CLI's mask is their argmax, the
    names VOC's."""
    import torch
    from PIL import Image
    from skimage import data
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large
    torch.manual_seed(0)
    tm = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).eval()
    torch.save(tm.state_dict(), tmp_path / "lraspp.pth")
    weights = tmp_path / "lraspp.safetensors"
    assert main(["import", "lraspp_mobilenet_v3_large", str(tmp_path / "lraspp.pth"), "--from", "torchvision",
                 "--out", str(weights)]) == 0
    photo = data.coffee()[100:297, 150:413]
    Image.fromarray(photo).save(tmp_path / "coffee.png")
    model = archc.load("lraspp_mobilenet_v3_large")
    r = archc.segment(model, str(weights), str(tmp_path / "coffee.png"), scores=True)[0]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = ((torch.from_numpy(photo.copy()).float() / 255 - mean) / std).permute(2, 0, 1)[None]
    with torch.no_grad():
        want = tm(x)["out"][0].permute(1, 2, 0).numpy()
    assert r["how"] == "whole" and r["scores"].shape == want.shape == (197, 263, 21)
    assert np.abs(r["scores"] - want).max() <= 1e-4 * np.abs(want).max()
    capsys.readouterr()
    assert main(["segment", "lraspp_mobilenet_v3_large", "--weights", str(weights), str(tmp_path / "coffee.png"),
                 "--out", str(tmp_path / "out"), "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)[0]
    with Image.open(entry["mask"]) as im:
        assert (np.asarray(im) == np.argmax(r["scores"], -1)).all()
    from archc.detection.api import class_names
    voc = class_names("voc")
    assert [c["name"] for c in entry["classes"]] == [voc[c["index"]] for c in entry["classes"]]
