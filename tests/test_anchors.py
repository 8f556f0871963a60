"""Priors, box / landmark encoding and the batched matcher."""
import math

import numpy as np
import pytest
import torch

from common.anchors import (box_iou_batched, boxes_cxcywh_to_xyxy, decode_boxes, decode_landmarks, encode_boxes,
                            encode_landmarks, match, retinaface_priors)


def test_priors_count_and_order_small_size():
    height, width = 70, 100  # not multiples of the steps: feature maps are ceil(H/step) x ceil(W/step)
    priors = retinaface_priors(height, width)
    expected = []
    for sizes, step in zip(((16, 32), (64, 128), (256, 512)), (8, 16, 32)):
        for i in range(math.ceil(height / step)):
            for j in range(math.ceil(width / step)):
                for s in sizes:
                    expected.append([(j + 0.5) * step / width, (i + 0.5) * step / height, s / width, s / height])
    assert priors.shape == (2 * (9 * 13 + 5 * 7 + 3 * 4), 4)
    assert torch.allclose(priors, torch.tensor(expected), atol=1e-6)


def test_priors_device_copy_is_independent():
    a = retinaface_priors(64, 64, device='cpu')
    a.zero_()
    assert retinaface_priors(64, 64).abs().sum() > 0  # the cache cannot be corrupted by a caller


def test_encode_decode_identity():
    torch.manual_seed(0)
    priors = retinaface_priors(128, 160)
    centre = torch.rand(3, len(priors), 2)
    size = torch.rand(3, len(priors), 2) * 0.5 + 0.01
    boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
    assert torch.allclose(decode_boxes(encode_boxes(boxes, priors), priors), boxes, atol=1e-5)
    points = torch.rand(3, len(priors), 5, 2)
    encoded = encode_landmarks(points, priors)
    assert encoded.shape == (3, len(priors), 10)
    assert torch.allclose(decode_landmarks(encoded, priors), points, atol=1e-5)
    # zero regression decodes to the prior itself
    assert torch.allclose(decode_boxes(torch.zeros(len(priors), 4), priors), boxes_cxcywh_to_xyxy(priors), atol=1e-6)


def _faces(boxes_px, with_landmarks=True):
    boxes = np.asarray(boxes_px, np.float32).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    offsets = np.array([[-0.2, -0.2], [0.2, -0.2], [0, 0], [-0.15, 0.2], [0.15, 0.2]], np.float32)
    landmarks = centre[:, None] + offsets[None] * (boxes[:, None, 2:] - boxes[:, None, :2])
    valid = np.full(len(boxes), with_landmarks)
    return {'boxes': boxes, 'landmarks': np.where(valid[:, None, None], landmarks, 0), 'landmark_valid': valid}


SIZE = 320


@pytest.fixture
def priors():
    return retinaface_priors(SIZE, SIZE)


def _iou_px(priors, boxes_px):
    return box_iou_batched(torch.as_tensor(boxes_px, dtype=torch.float32)[None] / SIZE,
                           boxes_cxcywh_to_xyxy(priors))[0]


def test_match_kept_faces_force_match_and_thresholds(priors):
    # a well-placed face, a face whose best prior IoU is between 0.2 and 0.35 (kept only by force-matching),
    # and a tiny face (best IoU < 0.2) that must be dropped
    boxes = [[40, 40, 104, 104], [151, 136, 161, 176], [300, 10, 302, 12]]
    iou = _iou_px(priors, boxes)
    best = iou.max(1).values
    assert best[0] > 0.35 and 0.2 <= best[1] < 0.35 and best[2] < 0.2  # the scene is what the test claims
    result = match(priors, [_faces(boxes)], image_size=(SIZE, SIZE))
    labels, gt = result.labels[0], result.gt_index[0]
    assert labels.dtype == torch.long and set(labels.unique().tolist()) <= {0, 1}

    # every kept face has at least one prior, its best prior among them
    assert (gt == 0).sum() > 1 and gt[iou[0].argmax()] == 0
    assert (gt == 1).sum() == 1 and gt[iou[1].argmax()] == 1  # force-matched only
    assert (gt == 2).sum() == 0  # dropped
    # thresholds: non-forced positives have IoU >= 0.35 with their face, background < 0.35 with every face
    forced = torch.zeros_like(labels, dtype=torch.bool)
    forced[iou[:2].argmax(1)] = True
    positive = labels == 1
    assert (iou[gt[positive & ~forced], torch.nonzero(positive & ~forced)[:, 0]] >= 0.35).all()
    assert (iou[:, ~positive].max(0).values < 0.35).all()
    # the encoded targets decode back to the matched face
    decoded = decode_boxes(result.loc[0][positive], priors[positive]) * SIZE
    assert torch.allclose(decoded, torch.tensor(boxes, dtype=torch.float32)[gt[positive]], atol=1e-3)
    landmarks = decode_landmarks(result.landmarks[0][positive], priors[positive]) * SIZE
    expected = torch.as_tensor(_faces(boxes)['landmarks'])[gt[positive]]
    assert torch.allclose(landmarks, expected, atol=1e-3)
    assert torch.equal(result.landmark_mask[0], positive)
    assert (result.loc[0][~positive] == 0).all()


def test_match_landmark_mask_follows_valid_flags(priors):
    with_lm, without_lm = _faces([[40, 40, 104, 104]]), _faces([[180, 180, 260, 260]], with_landmarks=False)
    target = {k: np.concatenate([with_lm[k], without_lm[k]]) for k in with_lm}
    result = match(priors, [target], image_size=(SIZE, SIZE))
    gt, mask = result.gt_index[0], result.landmark_mask[0]
    assert (gt == 1).any() and not mask[gt == 1].any()
    assert mask[gt == 0].all()
    assert (result.landmarks[0][gt == 1] == 0).all()


def test_match_empty_image_all_background(priors):
    empty = {'boxes': np.zeros((0, 4), np.float32), 'landmarks': np.zeros((0, 5, 2), np.float32),
             'landmark_valid': np.zeros(0, bool)}
    result = match(priors, [empty, empty], image_size=(SIZE, SIZE))
    assert result.labels.shape == (2, len(priors)) and (result.labels == 0).all()
    assert (result.loc == 0).all() and not result.landmark_mask.any() and (result.gt_index == -1).all()


def test_match_batched_equals_per_image(priors):
    rng = np.random.default_rng(0)
    targets = []
    for count in (5, 0, 12, 1):
        xy = rng.uniform(0, SIZE - 80, (count, 2))
        wh = rng.uniform(6, 80, (count, 2))
        faces = _faces(np.concatenate([xy, xy + wh], 1))
        faces['landmark_valid'] = rng.random(count) > 0.3
        targets.append(faces)
    batched = match(priors, targets, image_size=(SIZE, SIZE))
    for i, target in enumerate(targets):
        single = match(priors, [target], image_size=(SIZE, SIZE))
        for name, a, b in zip(batched._fields, batched, single):
            assert torch.allclose(a[i].float(), b[0].float(), atol=1e-5), name
    # small chunks (the crowd-image memory guard) give the same result
    chunked = match(priors, targets, image_size=(SIZE, SIZE), max_elements=1)
    for a, b in zip(batched, chunked):
        assert torch.equal(a, b)


def test_match_normalised_equals_pixels(priors):
    faces = _faces([[40, 40, 104, 104], [180, 180, 260, 260]])
    normalised = {**faces, 'boxes': faces['boxes'] / SIZE, 'landmarks': faces['landmarks'] / SIZE}
    a = match(priors, [faces], image_size=(SIZE, SIZE))
    b = match(priors, [normalised])
    assert torch.equal(a.labels, b.labels) and torch.allclose(a.loc, b.loc, atol=1e-5)


def test_match_bad_target_shape_is_named(priors):
    with pytest.raises(ValueError, match='target 0: boxes'):
        match(priors, [{'boxes': np.zeros((2, 3), np.float32)}])
