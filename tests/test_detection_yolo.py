"""YOLO v1's decoding (Redmon et al. 2016, Sec. 2) against a NumPy reference written here from
the paper: an S×S grid, B boxes per cell (x, y: the centre's offset within the cell; w, h: the
square roots of the size relative to the image; a confidence), C class probabilities per cell;
at test time the class-specific confidence Pr(class | object) · confidence, a threshold, and
non-maximum suppression per class."""
import jax
import numpy as np
import pytest

import archc
from archc.detection import api

S, NB, C = 7, 2, 20


def reference(y, size, score_thresh, nms_thresh, max_det):
    """The paper's test-time decoding, plainly: a list of (score, label, box) by descending score."""
    h, w = size
    per_class = {k: [] for k in range(C)}
    for r in range(S):
        for c in range(S):
            cell = y[r, c]
            probs = cell[5 * NB:]
            for b in range(NB):
                x, yy, sw, sh, conf = cell[5 * b:5 * b + 5]
                cx, cy = (x + c) / S * w, (yy + r) / S * h
                bw, bh = sw ** 2 * w, sh ** 2 * h
                box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
                for k in range(C):
                    score = probs[k] * conf
                    if score > score_thresh:
                        per_class[k].append((score, box))

    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
    out = []
    for k, cands in per_class.items():
        kept = []
        for score, box in sorted(cands, key=lambda t: -t[0]):
            if all(iou(box, kb) <= nms_thresh for _, kb in kept):
                kept.append((score, box))
        out += [(s, k + 1, np.clip(b, 0, [w, h, w, h])) for s, b in kept]
    return sorted(out, key=lambda t: -t[0])[:max_det]


@pytest.fixture(scope="module")
def yolo():
    return archc.load("yolo_v1")


@pytest.mark.isa
@pytest.mark.parametrize("seed,thresh,nms", [(0, 0.2, 0.4), (1, 0.05, 0.5), (2, 0.3, 0.3)])
def test_decoding_matches_the_papers(yolo, seed, thresh, nms):
    det = api.detector_for(yolo, score_thresh=thresh, nms_thresh=nms)
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 1, (2, S, S, 5 * NB + C))
    logits = rng.normal(0, 2, (2, S, S, C))
    y[..., 5 * NB:] = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)     # class probabilities
    sizes = np.array([[448, 448], [448, 448]], np.int32)
    # float64 like the reference: the threshold, the order and NMS cannot flip on float noise
    with jax.enable_x64(True):
        d = jax.tree.map(np.asarray, jax.jit(det.postprocess, static_argnums=2)({det.decl.scores[0]: y}, sizes,
                                                                              (448, 448)))
    assert d.scores.dtype == np.float64
    for i in range(2):
        ref = reference(y[i], (448, 448), thresh, nms, det.decl.detections_per_img)
        n = int(d.count[i])
        assert n == len(ref) and n > 5
        np.testing.assert_array_equal(d.labels[i, :n], [t[1] for t in ref])
        np.testing.assert_allclose(d.scores[i, :n], [t[0] for t in ref], rtol=0, atol=1e-12)
        np.testing.assert_allclose(d.boxes[i, :n], np.stack([t[2] for t in ref]), rtol=0, atol=1e-9)
        assert (d.labels[i, n:] == -1).all()


def test_names_and_declared_layout(yolo):
    det = api.detector_for(yolo)
    assert det.names[1] == "aeroplane" and len(det.names) == 21 and det.decl.nms_thresh == 0.4
    assert (det.grid.side, det.grid.boxes, det.grid.classes) == (S, NB, C)
    assert archc.load("yolo_v1", score_thresh=0.5).graph.declarations["detect"].score_thresh == 0.5
