"""RetinaNet parts: the Extractor and its feature shapes, the network's outputs and initialisation, loading
torchvision / pretrain weights, anchors and batched matching, the focal and box losses, decode and per-class NMS."""
import math

import numpy as np
import pytest
import torch
import torchvision
from torchvision.ops import box_iou, sigmoid_focal_loss

from common.anchors import (BACKGROUND, IGNORED, RETINANET_VARIANCES, boxes_cxcywh_to_xyxy, decode_boxes,
                            match_anchors, retinanet_anchor_sizes, retinanet_anchors)
from common.checkpoint import CheckpointError
from common.losses import RetinaNetLoss
from common.models import build_model, load_pretrained
from common.anchors import decode_retinanet
from common.inference.nms import postprocess_objects
from common.models.retinanet import Extractor, RetinaNet


@pytest.mark.parametrize('arch, channels', [('resnet18', (128, 256, 512)), ('resnet50', (512, 1024, 2048))])
def test_extractor_features_and_logits(arch, channels):
    net = Extractor(arch, num_classes=7).eval()
    x = torch.randn(2, 3, 70, 100)  # not multiples of 32: each level is ceil(size / stride)
    with torch.no_grad():
        features = net(x, classify=False)
        logits = net(x)
    assert [tuple(f.shape) for f in features] == [(2, c, math.ceil(70 / s), math.ceil(100 / s))
                                                  for c, s in zip(channels, (8, 16, 32))]
    assert logits.shape == (2, 7)
    with pytest.raises(RuntimeError, match='without a classifier'):
        Extractor(arch)(x)


def test_freeze_bn_stays_frozen_through_train():
    model = RetinaNet(3, 'resnet18', fpn_channels=32).freeze_bn()
    model.train()
    bns = [m for m in model.extractor.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns) and all(not p.requires_grad for m in bns for p in m.parameters())
    before = bns[0].running_mean.clone()
    model(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8))
    assert torch.equal(before, bns[0].running_mean)
    assert model.classifier.training and model.extractor.layer1[0].conv1.weight.requires_grad


def test_outputs_match_the_anchors_and_start_as_background():
    model = RetinaNet(5, 'resnet18', fpn_channels=32).eval()
    with torch.no_grad():
        cls_logits, box_offsets = model(torch.randint(0, 255, (2, 3, 96, 128), dtype=torch.uint8))
    anchors = retinanet_anchors(96, 128, retinanet_anchor_sizes(128))
    assert cls_logits.shape == (2, len(anchors), 5) and box_offsets.shape == (2, len(anchors), 4)
    # prior probability 0.01 on every anchor and class at the start; box offsets near 0 (N(0, 0.01) weights)
    assert cls_logits.sigmoid().mean().item() == pytest.approx(0.01, rel=0.3)
    assert box_offsets.abs().mean() < 0.1
    assert build_model({'name': 'retinanet', 'arch': 'resnet18', 'num_classes': 5, 'fpn_channels': 32,
                        'group_norm': True, 'anchor_scales': [1, 2], 'anchor_ratios': [1]}).classifier.output \
        .out_channels == 2 * 5


def test_torchvision_and_pretrain_weights_load_into_the_extractor(tmp_path):
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / 'resnet18.pth')  # as torchvision saves its downloads
    model = RetinaNet(4, 'resnet18', fpn_channels=32)
    report = load_pretrained(model, tmp_path / 'resnet18.pth')
    assert 'backbone tensors into model.body' in report and 'dropped 2 classifier' in report
    assert torch.equal(model.extractor.layer3[1].conv2.weight, resnet.layer3[1].conv2.weight)
    assert torch.equal(model.extractor.bn1.running_var, resnet.bn1.running_var)
    # a pretrain_extractor.py checkpoint: {'model': Extractor with its classifier, 'arch': ...}
    extractor = Extractor('resnet18', num_classes=6)
    load_pretrained(model, {'model': extractor.state_dict(), 'arch': {'name': 'extractor'}})
    assert torch.equal(model.extractor.layer4[0].conv1.weight, extractor.layer4[0].conv1.weight)
    with pytest.raises(CheckpointError, match='does not fit'):
        load_pretrained(RetinaNet(4, 'resnet34', fpn_channels=32), tmp_path / 'resnet18.pth')


def test_anchor_count_order_and_shapes():
    sizes = (16, 32, 64, 128, 256)
    anchors = retinanet_anchors(70, 100, sizes)
    expected = []
    for size, stride in zip(sizes, (8, 16, 32, 64, 128)):
        for i in range(math.ceil(70 / stride)):
            for j in range(math.ceil(100 / stride)):
                for scale in (1, 2 ** (1 / 3), 2 ** (2 / 3)):
                    for ratio in (0.5, 1, 2):
                        expected.append([(j + 0.5) * stride, (i + 0.5) * stride, size * scale / math.sqrt(ratio),
                                         size * scale * math.sqrt(ratio)])
    assert anchors.shape == (len(expected), 4)
    assert torch.allclose(anchors, torch.tensor(expected), atol=1e-4)
    assert retinanet_anchor_sizes(512) == (32, 64, 128, 256, 512) == retinanet_anchor_sizes(800)
    assert retinanet_anchor_sizes(256) == (16, 32, 64, 128, 256)


def random_objects(rng, count, size=256):
    xy = rng.uniform(0, size * 0.8, (count, 2))
    wh = rng.uniform(8, size * 0.5, (count, 2))
    return torch.tensor(np.concatenate([xy, np.minimum(xy + wh, size)], 1), dtype=torch.float32)


def test_matching_rules_for_a_batch():
    rng = np.random.default_rng(0)
    anchors = retinanet_anchors(256, 256, retinanet_anchor_sizes(256))
    targets = [{'boxes': random_objects(rng, n), 'labels': torch.tensor(rng.integers(0, 5, n))} for n in (6, 0, 3)]
    targets[2]['ignore'] = torch.tensor([False, True, False])
    matched = match_anchors(anchors, targets)
    xyxy = boxes_cxcywh_to_xyxy(anchors)
    assert (matched.labels[1] == BACKGROUND).all()  # no objects: all background
    for image in (0, 2):
        t = targets[image]
        iou = box_iou(t['boxes'], xyxy)                                       # (G, A)
        best, owner = iou.max(0)
        labels = matched.labels[image]
        ignore = t.get('ignore', torch.zeros(len(t['boxes']), dtype=torch.bool))
        forced = torch.zeros_like(labels, dtype=torch.bool)
        forced[iou.argmax(1)] = True                                            # every object keeps its best anchor
        plain = ~forced
        assert (labels[plain & (best >= 0.5) & ~ignore[owner]] == t['labels'][owner][plain & (best >= 0.5)
                                                                                     & ~ignore[owner]]).all()
        assert (labels[plain & (best < 0.4)] == BACKGROUND).all()
        assert (labels[plain & (best >= 0.4) & (best < 0.5)] == IGNORED).all()
        assert (labels[plain & (best >= 0.4) & ignore[owner]] == IGNORED).all()
        for g in range(len(t['boxes'])):
            anchor = iou[g].argmax()
            assert labels[anchor] == (IGNORED if ignore[g] else t['labels'][g])
        # the box targets decode back to the matched object
        positive = labels >= 0
        decoded = decode_boxes(matched.loc[image][positive], anchors[positive], RETINANET_VARIANCES)
        assert torch.allclose(decoded, t['boxes'][matched.gt_index[image][positive]], atol=1e-3)
        assert torch.allclose(matched.boxes[image][positive], decoded, atol=1e-3)
    # image by image gives the same targets as the batch
    alone = match_anchors(anchors, targets[2:])
    assert torch.equal(alone.labels[0], matched.labels[2]) and torch.equal(alone.loc[0], matched.loc[2])


def test_focal_and_box_losses():
    rng = np.random.default_rng(1)
    anchors = retinanet_anchors(128, 128, retinanet_anchor_sizes(128))
    targets = [{'boxes': random_objects(rng, 4, 128), 'labels': torch.tensor([0, 2, 2, 1])}]
    matched = match_anchors(anchors, targets)
    torch.manual_seed(0)
    cls_logits, box_offsets = torch.randn(1, len(anchors), 3), torch.randn(1, len(anchors), 4) * 0.1
    loss, parts = RetinaNetLoss()((cls_logits, box_offsets), matched, anchors)
    labels = matched.labels[0]
    positive, counted = labels >= 0, labels != IGNORED
    one_hot = torch.zeros(len(anchors), 3)
    one_hot[positive, labels[positive]] = 1
    expected_cls = sigmoid_focal_loss(cls_logits[0][counted], one_hot[counted], 0.25, 2, 'sum') / positive.sum()
    expected_box = torch.nn.functional.smooth_l1_loss(box_offsets[0][positive], matched.loc[0][positive],
                                                      beta=1 / 9, reduction='sum') / positive.sum()
    assert parts['cls'] == pytest.approx(expected_cls.item(), rel=1e-5)
    assert parts['box'] == pytest.approx(expected_box.item(), rel=1e-5)
    assert loss.item() == pytest.approx((expected_cls + expected_box).item(), rel=1e-5)
    # GIoU: zero for perfect offsets
    _, parts = RetinaNetLoss(box_loss='giou')((cls_logits, matched.loc), matched, anchors)
    assert parts['box'].item() == pytest.approx(0.0, abs=1e-5)


def test_decode_and_per_class_nms():
    anchors = torch.tensor([[50.0, 50, 40, 40], [52, 50, 40, 40], [150, 150, 60, 60]])
    cls_logits = torch.full((1, 3, 2), -10.0)
    cls_logits[0, 0, 0] = 3.0    # class 0 at anchor 0 ...
    cls_logits[0, 1, 0] = 2.0    # ... and again at the overlapping anchor 1: suppressed
    cls_logits[0, 1, 1] = 1.0    # class 1 at anchor 1: another class, kept
    cls_logits[0, 2, 1] = 0.5
    boxes, scores, labels = decode_retinanet(cls_logits, torch.zeros(1, 3, 4), anchors, top_k=6)
    assert boxes.shape == (1, 6, 4) and torch.allclose(boxes[0, 0], torch.tensor([30.0, 30, 70, 70]))
    out = postprocess_objects(boxes.expand(2, -1, -1), scores.expand(2, -1), labels.expand(2, -1),
                                scales=[1.0, 0.5], image_sizes=[(200, 200), (100, 100)])
    assert out[0]['labels'].tolist() == [0, 1, 1] and torch.allclose(out[0]['scores'], torch.sigmoid(
        torch.tensor([3.0, 1.0, 0.5])))
    assert torch.allclose(out[1]['boxes'][0], torch.tensor([60.0, 60, 100, 100]))  # / 0.5, clipped to 100
    assert len(postprocess_objects(boxes, scores, labels, keep_top_k=1)[0]['boxes']) == 1
