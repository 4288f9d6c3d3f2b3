"""Object detection, laid out as torchvision's: box arithmetic (boxes), anchors and SSD default
boxes (anchors), the input transform (transform), the images it takes (images), the detection
description (declare: the ``.arch`` declarations) and the registry of detector kinds
(registry); the Detector base (detector) and what every kind's post-processing shares
(postprocess: the padded Detections, per-class NMS); the kinds (ssd, yolo, and Faster R-CNN's
rpn, roi_heads, faster_rcnn); ``archc.detect`` (api). Training: the task (task, training), the
data (coco, voc, data, augment), matching and sampling (matcher, sampler), the losses
(loss_terms, ssd_loss, rcnn_loss, yolo_loss), the recipe and fine-tuning (recipe, finetune);
evaluation (evaluate) and drawing (draw). JAX, static shapes, torchvision's exact rules.

Importing this package imports only its JAX-free declarations, which register their kinds with
the compiler (archc/__init__.py imports it)."""
from . import declare, finetune  # noqa: F401
