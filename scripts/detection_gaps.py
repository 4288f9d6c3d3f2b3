"""How close the Faster R-CNN RPN's top-k decisions come, in float32 and float64: the figures
docs/detection.md gives for why the end-to-end parity test runs in float64.

    python scripts/detection_gaps.py

torchvision's fasterrcnn_mobilenet_v3_large_320_fpn as tests/test_faster_rcnn.py builds it (5
classes, seed 0, BN statistics randomised with seed 1) on the test's two images; per FPN level
and image: the smallest gap between consecutive logits among the best pre_nms_top_n (+1), the gap
at the top-k boundary, and how many of those neighbours are equal in that dtype. (NMS's IoU
margins and the box-score threshold margins are not measured here.)"""
import copy

import numpy as np
import torch
import torchvision.models.detection as D

torch.manual_seed(0)
tm = D.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=5, box_score_thresh=0.0).eval()
g = torch.Generator().manual_seed(1)
for mod in tm.modules():
    if isinstance(mod, torch.nn.BatchNorm2d):
        mod.running_mean.normal_(0, 0.1, generator=g)
        mod.running_var.uniform_(0.5, 2.0, generator=g)
rng = np.random.default_rng(0)
ims = [rng.uniform(0, 1, (320, 320, 3)), rng.uniform(0, 1, (240, 400, 3))]
for dt in (torch.float32, torch.float64):
    m = copy.deepcopy(tm).to(dt)
    with torch.no_grad():
        il, _ = m.transform([torch.from_numpy(im).permute(2, 0, 1).to(dt) for im in ims])
        obj, _ = m.rpn.head(list(m.backbone(il.tensors).values()))
    k = m.rpn.pre_nms_top_n()
    for lvl, o in enumerate(obj):
        for i in range(2):
            v = np.sort(o[i].flatten().numpy())[::-1]
            kk = min(k, len(v))
            top = v[:kk + 1] if kk < len(v) else v[:kk]
            gaps = -np.diff(top)
            nz = gaps[gaps > 0]
            rel = nz / np.maximum(np.abs(top[1:][gaps > 0]), 1e-30)
            ties = int((gaps == 0).sum())
            bnd = (v[kk - 1] - v[kk]) if kk < len(v) else float("nan")
            print(f"{str(dt)[6:]} level {lvl} image {i}: n={len(v)} k={kk} smallest gap {nz.min():.2e} (rel {rel.min():.1e}), "
                  f"boundary gap {bnd:.2e}, exact ties {ties}")
