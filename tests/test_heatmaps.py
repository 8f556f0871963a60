"""CenterFace targets (common.heatmaps): Gaussians, encode -> decode round trip, empty images."""
import math

import pytest
import torch

from common.heatmaps import build_targets, decode_centerface, gaussian_radius
from common.inference.nms import postprocess

DOWN = 4


def face_targets():
    """Two images: faces of many sizes (two close together, one without landmarks, one touching the border);
    a third image without faces."""
    boxes0 = torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 8.0, 70.0, 21.0], [75.0, 10.0, 87.0, 24.5],
                           [100.3, 70.1, 127.9, 95.9]])
    boxes1 = torch.tensor([[3.0, 5.0, 120.0, 90.0], [30.5, 40.2, 36.7, 47.9]])
    targets = []
    for boxes, valid in ((boxes0, [True, True, False, True]), (boxes1, [True, True])):
        size = boxes[:, 2:] - boxes[:, :2]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        canonical = torch.tensor([[-0.2, -0.1], [0.2, -0.1], [0.0, 0.07], [-0.15, 0.23], [0.15, 0.23]])
        landmarks = centre[:, None] + canonical[None] * size[:, None]
        valid = torch.tensor(valid)
        landmarks[~valid] = 0
        targets.append({'boxes': boxes, 'landmarks': landmarks, 'landmark_valid': valid})
    targets.append({'boxes': torch.zeros(0, 4), 'landmarks': torch.zeros(0, 5, 2),
                    'landmark_valid': torch.zeros(0, dtype=torch.bool)})
    return targets


def perfect_outputs(encoded, grid_hw):
    """The network output that matches the targets exactly: heatmap logits and, at each face's cell, its values."""
    batch = encoded.heatmap.shape[0]
    height, width = grid_hw
    outputs = {'hm': torch.logit(encoded.heatmap.clamp(1e-6, 1 - 1e-6))}
    for name, values in (('off', encoded.offset), ('wh', encoded.size), ('lm', encoded.landmarks)):
        maps = torch.zeros(batch, values.shape[1], height * width)
        maps[encoded.image, :, encoded.cell] = values
        outputs[name] = maps.view(batch, -1, height, width)
    return outputs


def test_encode_then_decode_recovers_boxes_and_landmarks():
    targets = face_targets()
    input_hw, grid_hw = (96, 128), (24, 32)
    encoded = build_targets(targets, grid_hw, down=DOWN)
    assert encoded.num_faces == 6
    boxes, scores, landmarks = decode_centerface(perfect_outputs(encoded, grid_hw), input_hw)
    results = postprocess(boxes, scores, landmarks, conf_thres=0.99, nms_thres=0.9)
    assert [len(r['boxes']) for r in results] == [4, 2, 0]
    for target, result in zip(targets[:2], results[:2]):
        # match each true face to its decoded one by centre distance (decoding order is by score)
        centre_true = (target['boxes'][:, :2] + target['boxes'][:, 2:]) / 2
        centre_found = (result['boxes'][:, :2] + result['boxes'][:, 2:]) / 2
        order = torch.cdist(centre_true, centre_found).argmin(dim=1)
        assert sorted(order.tolist()) == list(range(len(order)))
        torch.testing.assert_close(result['boxes'][order], target['boxes'], atol=1e-3, rtol=0)
        valid = target['landmark_valid']
        torch.testing.assert_close(result['landmarks'][order][valid], target['landmarks'][valid], atol=1e-3, rtol=0)


def test_targets_encoding_values():
    """Offsets in [0,1), log sizes, landmarks relative to the top-left corner in box units; landmark mask."""
    targets = face_targets()
    encoded = build_targets(targets, (24, 32), down=DOWN, reg_min=1.0)   # centre cells only: one row per face
    box = targets[0]['boxes'][0]                                 # 10,12 .. 50,60: centre (30, 36) px = (7.5, 9)
    assert encoded.cell[0].item() == 9 * 32 + 7
    torch.testing.assert_close(encoded.offset[0], torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(encoded.size[0], torch.log(torch.tensor([40.0, 48.0]) / DOWN))
    # landmarks from the box's top-left corner in box units: the centre-relative (-0.2, -0.1) plus one half
    torch.testing.assert_close(encoded.landmarks[0, :2], torch.tensor([0.3, 0.4]), atol=1e-6, rtol=0)
    assert encoded.landmark_mask.tolist() == [True, True, False, True, True, True]
    assert (encoded.landmarks[2] == 0).all()
    assert encoded.image.tolist() == [0, 0, 0, 0, 1, 1]
    assert (encoded.offset >= 0).all() and (encoded.offset < 1).all()
    assert (encoded.weight == 1).all() and encoded.num_faces == 6
    assert box.tolist() == [10.0, 12.0, 50.0, 60.0]


def test_regression_samples_around_the_centre_all_point_at_it():
    """With reg_min < 1 large faces get several samples; every sample's cell + offset is its face's centre,
    weights sum to 1 per face, and no cell regresses a face whose Gaussian is lower there than another's."""
    targets = face_targets()
    centre_only = build_targets(targets, (24, 32), down=DOWN, reg_min=1.0)
    encoded = build_targets(targets, (24, 32), down=DOWN, reg_min=0.3)
    assert encoded.image.numel() > centre_only.image.numel()
    xy = torch.stack([encoded.cell % 32, encoded.cell // 32], dim=1).float()
    centres = torch.cat([(t['boxes'][:, :2] + t['boxes'][:, 2:]) / 2 / DOWN for t in targets])
    face_centre = xy + encoded.offset
    # each sample must reproduce one of the face centres, with that face's size
    distance = (face_centre[:, None] - centres[None]).norm(dim=-1)
    owner = distance.argmin(dim=1)
    assert distance.min(dim=1).values.max() < 1e-4
    sizes = torch.log(torch.cat([t['boxes'][:, 2:] - t['boxes'][:, :2] for t in targets]) / DOWN)
    torch.testing.assert_close(encoded.size, sizes[owner])
    per_face = torch.zeros(len(centres)).index_add_(0, owner, encoded.weight)
    torch.testing.assert_close(per_face, torch.ones(len(centres)))
    heat = encoded.heatmap.view(-1)[encoded.image * 24 * 32 + encoded.cell]
    assert (heat >= 0.3).all()


def test_peak_region_of_large_faces():
    """pos_min < 1 makes the regression cells of high Gaussian value peaks too: several for a large face, each of
    them a regression sample (so it decodes to its face), one for a face too small to have more."""
    targets = face_targets()
    encoded = build_targets(targets, (24, 32), down=DOWN, reg_min=0.5, pos_min=0.5)
    single = build_targets(targets, (24, 32), down=DOWN, reg_min=0.5)
    peaks = encoded.heatmap.view(-1).eq(1)
    assert int(peaks.sum()) > int(single.heatmap.eq(1).sum()) == 6
    sampled = torch.zeros_like(peaks)
    sampled[encoded.image * 24 * 32 + encoded.cell] = True
    assert not (peaks & ~sampled).any()                          # every peak regresses a face
    big = encoded.image.eq(1) & (encoded.size[:, 0] > math.log(100 / DOWN))   # the 117 x 85 px face of image 1
    assert int(big.sum()) >= 9
    tiny_face_cells = encoded.image.eq(1) & (encoded.size[:, 0] < math.log(8 / DOWN))  # the 6 x 8 px one
    assert int(tiny_face_cells.sum()) == 1
    torch.testing.assert_close(encoded.heatmap[encoded.heatmap < 1], single.heatmap[encoded.heatmap < 1])


def test_heatmap_peaks_and_naive_reference():
    """One peak of exactly 1 per face (separate cells), values in [0,1], equal to a per-face loop reference."""
    targets = face_targets()
    grid_hw = (24, 32)
    encoded = build_targets(targets, grid_hw, down=DOWN, reg_min=1.0)   # one row per face, at its centre
    heat = encoded.heatmap
    assert heat.shape == (3, 1, 24, 32)
    assert heat.min() >= 0 and heat.max() == 1
    assert int(heat.eq(1).sum()) == 6
    assert heat[2].abs().sum() == 0

    reference = torch.zeros_like(heat)
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing='ij')
    for b, cell, size in zip(encoded.image.tolist(), encoded.cell.tolist(), encoded.size):
        w, h = torch.exp(size).tolist()
        r = math.floor(float(gaussian_radius(torch.tensor(h), torch.tensor(w))))
        sigma = (2 * r + 1) / 6
        cy, cx = divmod(cell, 32)
        g = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
        g[((xs - cx).abs() > r) | ((ys - cy).abs() > r)] = 0
        reference[b, 0] = torch.maximum(reference[b, 0], g)
    torch.testing.assert_close(heat, reference)


def test_fixed_sigma_and_adaptive_radius():
    targets = face_targets()[:1]
    encoded = build_targets(targets, (24, 32), down=DOWN, sigma=1.0, reg_min=1.0)
    cy, cx = divmod(encoded.cell[0].item(), 32)
    assert encoded.heatmap[0, 0, cy, cx + 1].item() == pytest.approx(math.exp(-0.5), abs=1e-6)
    assert encoded.heatmap[0, 0, cy + 3, cx].item() == pytest.approx(math.exp(-4.5), abs=1e-6)
    assert encoded.heatmap[0, 0, cy + 4, cx].item() == 0  # window radius ceil(3 sigma) = 3

    sizes = torch.tensor([1.0, 2.0, 5.0, 20.0, 80.0])
    radius = gaussian_radius(sizes, sizes)
    assert (radius[1:] > radius[:-1]).all()              # grows with the face
    assert (radius <= sizes / 2).all() and (radius >= 0).all()


def test_empty_batch_and_landmarks_for_a_box_at_the_border():
    empty = [{'boxes': torch.zeros(0, 4), 'landmarks': torch.zeros(0, 5, 2),
              'landmark_valid': torch.zeros(0, dtype=torch.bool)}] * 2
    encoded = build_targets(empty, (8, 8))
    assert encoded.num_faces == 0 and encoded.image.numel() == 0 and encoded.heatmap.sum() == 0
    # a centre on the far edge of the input is clamped into the last cell
    edge = [{'boxes': torch.tensor([[20.0, 20.0, 32.0, 32.0]]), 'landmarks': torch.zeros(1, 5, 2),
             'landmark_valid': torch.tensor([False])}]
    encoded = build_targets(edge, (7, 7), down=4, reg_min=1)  # input 28 px, box centre at 26 px = 6.5 cells
    assert encoded.cell.item() == 6 * 7 + 6


def test_decode_keeps_only_peaks_and_infers_the_stride():
    heat = torch.full((1, 1, 8, 8), -10.0)
    heat[0, 0, 3, 4], heat[0, 0, 3, 5] = 3.0, 2.0        # a neighbour that is not a peak
    outputs = {'hm': heat, 'wh': torch.zeros(1, 2, 8, 8), 'off': torch.zeros(1, 2, 8, 8),
               'lm': torch.zeros(1, 10, 8, 8)}
    boxes, scores, landmarks = decode_centerface(outputs, (64, 64), top_k=5)
    assert scores.shape == (1, 5)
    assert scores[0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    second = torch.sigmoid(torch.tensor(2.0)).item()
    assert not torch.isclose(scores, torch.tensor(second)).any()  # (3,5) is suppressed by its stronger neighbour
    assert scores[0, 1:].max() < 1e-4                             # the flat background is all that is left
    torch.testing.assert_close(boxes[0, 0], torch.tensor([28.0, 20.0, 36.0, 28.0]))   # stride 8: centre (32, 24)
    torch.testing.assert_close(landmarks[0, 0], torch.tensor([[28.0, 20.0]] * 5))   # lm 0: the top-left corner
