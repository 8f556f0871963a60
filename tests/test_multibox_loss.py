"""MultiBoxLoss: hard negative mining 7:1, landmark masking, the weighted sum, gradients."""
import numpy as np
import torch

from common.anchors import match, retinaface_priors
from common.losses import MultiBoxLoss, hard_negative_mask

SIZE = 160


def _targets(with_landmarks=True):
    boxes = np.array([[20, 20, 60, 64], [90, 40, 150, 110]], np.float32)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    landmarks = np.repeat(centre[:, None], 5, 1) + np.arange(10, dtype=np.float32).reshape(1, 5, 2)
    valid = np.full(2, with_landmarks)
    face = {'boxes': boxes, 'landmarks': landmarks * valid[:, None, None], 'landmark_valid': valid}
    empty = {'boxes': np.zeros((0, 4), np.float32), 'landmarks': np.zeros((0, 5, 2), np.float32),
             'landmark_valid': np.zeros(0, bool)}
    return [face, empty, {k: v[:1] for k, v in face.items()}]


def _predictions(num_priors, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, num_priors, k, generator=g, requires_grad=True) for k in (4, 2, 10))


def test_hard_negative_mask_takes_seven_hardest_per_positive():
    g = torch.Generator().manual_seed(0)
    loss = torch.rand(3, 200, generator=g)
    positive = torch.zeros(3, 200, dtype=torch.bool)
    positive[0, :5] = True
    positive[2, 10:40] = True  # 30 positives: 7 x 30 > 199, capped at P - 1
    negative = hard_negative_mask(loss, positive, 7)
    assert negative.sum(1).tolist() == [35, 0, 200 - 30]  # image 2: min(210, 199) asked, all 170 background taken
    assert not (negative & positive).any()
    # the chosen negatives of image 0 are the highest-loss background priors
    background = ~positive[0]
    assert loss[0][negative[0]].min() >= loss[0][background & ~negative[0]].max()


def test_hard_negative_mask_counts_in_loss():
    priors = retinaface_priors(SIZE, SIZE)
    matched = match(priors, _targets(), image_size=(SIZE, SIZE))
    positives = (matched.labels == 1).sum(1)
    assert positives.tolist()[1] == 0 and positives[0] > positives[2] > 0
    per_prior = torch.rand(matched.labels.shape)
    negative = hard_negative_mask(per_prior, matched.labels == 1, 7)
    assert negative.sum(1).tolist() == (7 * positives).tolist()


def test_loss_parts_sum_and_gradients():
    priors = retinaface_priors(SIZE, SIZE)
    predictions = _predictions(len(priors))
    matched = match(priors, _targets(), image_size=(SIZE, SIZE))
    loss, parts = MultiBoxLoss()(predictions, matched)
    assert set(parts) == {'loc', 'cls', 'landm'}
    assert torch.isclose(loss, 2 * parts['loc'] + parts['cls'] + parts['landm'])
    assert all(v > 0 for v in parts.values())
    loss.backward()
    for p in predictions:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # background priors get no box gradient; positives do
    assert (predictions[0].grad[matched.labels == 0] == 0).all()
    assert (predictions[0].grad[matched.labels == 1].abs().sum(-1) > 0).all()


def test_landmark_loss_zero_without_landmarks():
    priors = retinaface_priors(SIZE, SIZE)
    predictions = _predictions(len(priors))
    loss, parts = MultiBoxLoss()(predictions, match(priors, _targets(with_landmarks=False), image_size=(SIZE, SIZE)))
    assert parts['landm'] == 0 and parts['loc'] > 0
    loss.backward()
    assert (predictions[2].grad == 0).all()


def test_perfect_regression_gives_zero_box_and_landmark_loss():
    priors = retinaface_priors(SIZE, SIZE)
    matched = match(priors, _targets(), image_size=(SIZE, SIZE))
    logits = torch.stack([1 - matched.labels, matched.labels], -1).float() * 20 - 10  # confident and right
    loss, parts = MultiBoxLoss()((matched.loc.clone(), logits, matched.landmarks.clone()), matched)
    assert parts['loc'] == 0 and parts['landm'] == 0 and parts['cls'] < 1e-3


def test_no_faces_in_batch_is_finite():
    priors = retinaface_priors(SIZE, SIZE)
    predictions = _predictions(len(priors), batch=1)
    loss, parts = MultiBoxLoss()(predictions, match(priors, [_targets()[1]], image_size=(SIZE, SIZE)))
    assert torch.isfinite(loss) and loss == 0  # no positives: no negatives mined either
