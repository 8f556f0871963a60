"""Our RetinaFace training steps against the reference's, as bench/reference_finetune.py writes them out from
Pytorch_Retinaface's train.py: given the same random draws the whole-face crop makes the same crops, and our batched
matching + MultiBoxLoss give the reference's per-image matching + loss values and gradients."""
import random

import numpy as np
import torch

from bench import reference_finetune as reference
from common.anchors import match, retinaface_priors
from common.losses import MultiBoxLoss
from common.data.transforms import random_square_crop


class PlannedDraws:
    """Hands out pre-drawn numbers to both sides: the reference's `random.choice` / `random.randrange`, our
    Generator's `choice` / `integers`."""

    def __init__(self, values):
        self.values = list(values)

    def choice(self, options):
        return self.values.pop(0)

    def randrange(self, stop):
        return self.values.pop(0)

    def integers(self, low, high):
        return self.values.pop(0)


def test_whole_face_crop_equals_the_reference_given_the_same_draws(monkeypatch):
    g = np.random.default_rng(0)
    size, compared = 416, 0
    for _ in range(60):
        # float boxes, as the squashed val_416 labels have them, many small, some near the borders
        corners = g.uniform(0, size - 4, (int(g.integers(1, 12)), 2))
        boxes = np.concatenate([corners, corners + g.uniform(1.5, 60, corners.shape)], 1).clip(0, size)
        boxes = boxes.astype(np.float32)
        draws, ours_draws = [], []
        for _ in range(250):
            scale = float(g.choice(reference.PRE_SCALES))
            side = int(scale * size)
            left, top = (int(g.integers(0, size - side)) if side < size else 0 for _ in range(2))
            draws += [scale] + ([left, top] if side < size else [])  # the reference draws no offset at full size
            ours_draws += [scale, left, top]
        monkeypatch.setattr(reference, 'random', PlannedDraws(draws))
        image = np.zeros((size, size, 3), np.uint8)
        landmarks = np.full((len(boxes), 10), -1.0)
        ref_image, ref_boxes, _, _, ref_failed = reference.crop(image, boxes.astype(np.float64),
                                                                np.ones((len(boxes), 1)), landmarks)
        target = {'boxes': boxes, 'landmarks': np.zeros((len(boxes), 5, 2), np.float32),
                  'landmark_valid': np.zeros(len(boxes), bool)}
        our_image, out, cropped = random_square_crop(image, target, PlannedDraws(ours_draws), whole_face=True)
        assert cropped == (not ref_failed)
        assert our_image.shape == ref_image.shape
        np.testing.assert_allclose(out['boxes'], ref_boxes, atol=1e-4)
        compared += len(ref_boxes)
    assert compared > 100


def _batch(seed=0, size=320):
    """Three images: crowded small faces (some without landmarks), one large face, no faces."""
    g = np.random.default_rng(seed)
    targets = []
    for count in (12, 1, 0):
        corners = g.uniform(0, size * 0.8, (count, 2))
        sizes = g.uniform(6, 40, (count, 1)) if count > 1 else np.array([[150.0]])
        boxes = np.concatenate([corners, np.minimum(corners + sizes, size)], 1).astype(np.float32)
        landmarks = (boxes[:, None, :2] + g.uniform(0, 1, (count, 5, 2)) * (boxes[:, None, 2:] - boxes[:, None, :2]))
        valid = g.random(count) < 0.7
        targets.append({'boxes': boxes, 'landmarks': (landmarks * valid[:, None, None]).astype(np.float32),
                        'landmark_valid': valid})
    return targets


def test_matching_and_multibox_loss_equal_the_reference_steps():
    size = 320
    targets = _batch()
    priors = retinaface_priors(size, size)
    g = torch.Generator().manual_seed(1)
    predictions = [torch.randn(3, priors.shape[0], k, generator=g) for k in (4, 2, 10)]

    ours = [p.clone().requires_grad_() for p in predictions]
    matched = match(priors, targets, threshold=0.35, image_size=(size, size))
    our_loss, parts = MultiBoxLoss(neg_pos_ratio=7, loc_weight=2.0)(tuple(ours), matched)
    our_loss.backward()

    theirs = [p.clone().requires_grad_() for p in predictions]
    rows = [torch.from_numpy(np.hstack([t['boxes'] / size,
                                        np.where(t['landmark_valid'][:, None], t['landmarks'].reshape(-1, 10) / size,
                                                 -1),
                                        np.where(t['landmark_valid'], 1.0, -1.0)[:, None]]).astype(np.float32))
            for t in targets]
    loss_l, loss_c, loss_landm = reference.multibox_loss(tuple(theirs), priors, rows)
    (2.0 * loss_l + loss_c + loss_landm).backward()

    for name, value in (('loc', loss_l), ('cls', loss_c), ('landm', loss_landm)):
        value = float(value.detach())
        assert abs(float(parts[name]) - value) < 1e-5 * max(1.0, value), name
    for mine, reference_grad in zip(ours, theirs):
        torch.testing.assert_close(mine.grad, reference_grad.grad, rtol=1e-4, atol=1e-7)


def test_reference_augmentation_gives_normalised_targets_inside_the_crop():
    random.seed(0)
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    targets = np.array([[50, 60, 120, 150] + [-1] * 10 + [-1], [200, 100, 260, 170] + [-1] * 10 + [-1]], np.float64)
    for _ in range(20):
        tensor, out = reference.preproc(image, targets, 160)
        assert tensor.shape == (3, 160, 160) and tensor.dtype == np.float32
        assert len(out) and (out[:, :4] >= 0).all() and (out[:, :4] <= 1).all() and (out[:, 14] == -1).all()


def test_reference_finetune_writes_a_checkpoint_detect_loads(tmp_path, capsys):
    """The script the bench runs: a short finetune on synthetic faces ends in a Pytorch_Retinaface state dict."""
    from common.inference.load import load_detector_model
    from common.models.retinaface import RetinaFace
    from common.synthetic import make_widerface
    root = make_widerface(tmp_path / 'data', num_images=8, seed=0)
    start = tmp_path / 'start.pth'
    torch.save(RetinaFace('mobile0.25').state_dict(), start)
    reference.main(['--data-root', str(root), '--pretrained', str(start), '--out', str(tmp_path / 'after.pth'),
                    '--batch-size', '4', '--image-size', '160', '--workers', '0'])
    assert 'step 2/2' in capsys.readouterr().out
    model, arch = load_detector_model(tmp_path / 'after.pth', 'mobile0.25')
    before = torch.load(start, weights_only=True)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
