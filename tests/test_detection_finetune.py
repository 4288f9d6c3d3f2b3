"""Fine-tuning rules from the network's backbone(...) declaration: the stages torchvision's
trainable_backbone_layers freezes, and bad declarations located in the file."""
import pytest

import archc
from archc.detection.finetune import FinetuneError, backbone_frozen
from archc.runtime.train import param_nodes
from archc.spec.source import ArchError

NET = """\
param classes = 4
param trainable_backbone_layers = 2
input 64x64x3
body: conv3(8, s=2) bn relu conv3(8) bn relu conv3(16, s=2) bn relu conv3(16, s=2) bn relu
branch cls1: @body conv3(4 * classes)
branch box1: @body conv3(4 * 4)
output cls1, box1
detect_input(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], fixed_size=[64, 64], size_divisible=1)
default_boxes(aspect_ratios=[[2]], steps=[8])
detect(kind="ssd", scores=[@cls1], boxes=[@box1], box_weights=[10, 10, 5, 5])
backbone(stages=STAGES, trainable=trainable_backbone_layers)
"""


def _net(tmp_path, stages='["body.conv1", "body.conv2", "body.conv3"]', **params):
    p = tmp_path / "net.arch"
    p.write_text(NET.replace("STAGES", stages))
    return archc.load(str(p), **params)


def test_trainable_stages_as_torchvision(tmp_path):
    # torchvision: the last N stages train, everything of the backbone before them is frozen
    m = _net(tmp_path)
    nodes = param_nodes(m)
    assert backbone_frozen(m, nodes) == ["body.conv1", "body.bn1"]
    assert backbone_frozen(m, nodes, 3) == []
    assert backbone_frozen(m, nodes, 1) == ["body.conv1", "body.bn1", "body.conv2", "body.bn2"]
    # 0: the whole backbone, through its last stage's layers, or up to `end`
    assert backbone_frozen(m, nodes, 0) == ["body.conv1", "body.bn1", "body.conv2", "body.bn2", "body.conv3"]
    m = _net(tmp_path, stages='["body.conv1", "body.conv2", "body.conv3"], end="cls1"', trainable_backbone_layers=0)
    assert backbone_frozen(m, nodes) == [n for n in nodes if n.startswith("body.")]


def test_bad_backbone_declarations(tmp_path):
    with pytest.raises(ArchError, match=r"net.arch:11:\d+: .*'trainable' must be in \[0, 3\]"):
        _net(tmp_path, trainable_backbone_layers=4)
    m = _net(tmp_path, stages='["body.conv2", "body.conv1"]')
    with pytest.raises(FinetuneError, match="listed in the network's order"):
        backbone_frozen(m, param_nodes(m))
    with pytest.raises(ArchError, match="'stages' is a list of layer names"):
        _net(tmp_path, stages="[1, 2]")
    m = _net(tmp_path, stages='["body.conv1", "body.convX"]')
    with pytest.raises(FinetuneError, match="stage 'body.convX' has no layer with weights"):
        backbone_frozen(m, param_nodes(m))


def _frozen_count(model, nodes) -> int:
    import numpy as np
    chosen = set(nodes)
    return sum(int(np.prod(v.shape)) for v in model.variable_specs if v.collection == "params" and v.node in chosen)


@pytest.mark.parametrize("name,trainable", [("fasterrcnn_resnet50_fpn", 3), ("fasterrcnn_resnet50_fpn", 0),
                                            ("fasterrcnn_mobilenet_v3_large_320_fpn", 3),
                                            ("fasterrcnn_mobilenet_v3_large_320_fpn", 1), ("ssd300_vgg16", 4),
                                            ("ssd300_vgg16", 0), ("ssdlite320_mobilenet_v3_large", 3),
                                            ("ssdlite320_mobilenet_v3_large", 0)])
def test_builtin_backbones_freeze_what_torchvision_freezes(name, trainable):
    """The parameters torchvision's extractors leave with requires_grad=False, counted, against
    the built-in's backbone(...) declaration at the same trainable_backbone_layers."""
    import torch
    import torchvision
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
    from torchvision.models.detection.ssd import _vgg_extractor
    if name.startswith("fasterrcnn_resnet50"):
        tv = _resnet_fpn_extractor(torchvision.models.resnet50(weights=None), trainable)
    elif name.startswith("fasterrcnn_mobilenet"):
        tv = _mobilenet_extractor(torchvision.models.mobilenet_v3_large(weights=None), True, trainable)
    elif name.startswith("ssdlite"):
        from torchvision.models.detection import ssdlite
        backbone = torchvision.models.mobilenet_v3_large(weights=None, reduced_tail=True)
        tv = ssdlite._mobilenet_extractor(backbone, trainable, torch.nn.BatchNorm2d)
    else:
        tv = _vgg_extractor(torchvision.models.vgg16(weights=None), False, trainable)
    expected = sum(p.numel() for p in tv.parameters() if not p.requires_grad)
    m = archc.load(name, trainable_backbone_layers=trainable)
    assert m.graph.declarations.get("backbone").trainable == trainable
    frozen = backbone_frozen(m, param_nodes(m))
    assert _frozen_count(m, frozen) == expected > 0
