"""Batched decode / score filter / NMS against a plain per-image greedy NMS."""
import numpy as np
import torch

from common.anchors import boxes_cxcywh_to_xyxy, retinaface_priors
from common.anchors import decode_retinaface
from common.inference.nms import postprocess, to_image_pixels


def greedy_nms_plus_one(boxes, scores, threshold):
    """Per-image greedy NMS with +1 pixel widths, written as plainly as possible (the reference behaviour)."""
    order = list(np.argsort(-scores, kind='stable'))
    keep = []
    while order:
        best = order.pop(0)
        keep.append(best)
        survivors = []
        for other in order:
            w = min(boxes[best, 2], boxes[other, 2]) - max(boxes[best, 0], boxes[other, 0]) + 1
            h = min(boxes[best, 3], boxes[other, 3]) - max(boxes[best, 1], boxes[other, 1]) + 1
            inter = max(w, 0) * max(h, 0)
            area = lambda b: (b[2] - b[0] + 1) * (b[3] - b[1] + 1)  # noqa: E731
            if inter / (area(boxes[best]) + area(boxes[other]) - inter) <= threshold:
                survivors.append(other)
        order = survivors
    return keep


def _random_detections(batch=3, num=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, num, 2, generator=g) * 300
    sizes = torch.rand(batch, num, 2, generator=g) * 60 + 5
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], -1)
    scores = torch.rand(batch, num, generator=g)
    landmarks = centres[:, :, None] + torch.randn(batch, num, 5, 2, generator=g)
    return boxes, scores, landmarks


def test_batched_equals_per_image_greedy_nms():
    boxes, scores, landmarks = _random_detections()
    results = postprocess(boxes, scores, landmarks, conf_thres=0.3, nms_thres=0.4, pre_nms_top_k=5000, keep_top_k=750)
    assert len(results) == 3
    for i, result in enumerate(results):
        candidates = torch.nonzero(scores[i] > 0.3)[:, 0]
        keep = candidates[greedy_nms_plus_one(boxes[i, candidates].numpy(), scores[i, candidates].numpy(), 0.4)]
        assert torch.equal(result['boxes'], boxes[i, keep])
        assert torch.equal(result['scores'], scores[i, keep])
        assert torch.equal(result['landmarks'], landmarks[i, keep])
        assert (result['scores'][:-1] >= result['scores'][1:]).all()  # best first


def test_nms_removes_duplicates_and_keeps_the_best():
    boxes = torch.tensor([[[10., 10, 50, 50], [11, 11, 51, 51], [100, 100, 140, 140], [10, 10, 50, 50]]])
    scores = torch.tensor([[0.8, 0.9, 0.7, 0.01]])
    result = postprocess(boxes, scores, None, conf_thres=0.02, nms_thres=0.4)[0]
    assert set(result) == {'boxes', 'scores'}
    assert torch.allclose(result['scores'], torch.tensor([0.9, 0.7]))
    assert torch.equal(result['boxes'][0], boxes[0, 1])


def test_top_k_limits_and_empty_images():
    boxes, scores, landmarks = _random_detections(batch=2, num=400, seed=1)
    scores[1] = 0.01  # nothing above the threshold in image 1
    results = postprocess(boxes, scores, landmarks, conf_thres=0.02, nms_thres=0.4, pre_nms_top_k=50, keep_top_k=7)
    assert len(results[0]['boxes']) == 7
    assert results[1]['boxes'].shape == (0, 4) and results[1]['landmarks'].shape == (0, 5, 2)
    # pre-NMS top-k: only the 50 best candidates take part
    fifty = scores[0].topk(50).values.min()
    assert (results[0]['scores'] >= fifty).all()
    # keep_top_k keeps the best ones, the same as the first 7 of an unlimited run
    unlimited = postprocess(boxes, scores, landmarks, conf_thres=0.02, nms_thres=0.4, pre_nms_top_k=50)
    assert torch.equal(unlimited[0]['boxes'][:7], results[0]['boxes'])


def test_decode_zero_outputs_gives_priors_in_pixels():
    height, width = 64, 96
    priors = retinaface_priors(height, width)
    num = len(priors)
    boxes, scores, landmarks = decode_retinaface(torch.zeros(2, num, 4), torch.zeros(2, num, 2),
                                                 torch.zeros(2, num, 10), priors, (height, width))
    expected = boxes_cxcywh_to_xyxy(priors) * torch.tensor([width, height, width, height])
    assert torch.allclose(boxes[1], expected, atol=1e-4)
    assert torch.allclose(scores, torch.full((2, num), 0.5))
    assert torch.allclose(landmarks[0, :, 3], priors[:, :2] * torch.tensor([width, height]), atol=1e-4)
    logits = torch.zeros(1, num, 2)
    logits[0, 0, 1] = 5.0
    assert decode_retinaface(torch.zeros(1, num, 4), logits, torch.zeros(1, num, 10), priors,
                             (height, width))[1][0, 0] > 0.99  # index 1 is the face class


def test_decoding_only_the_top_k_gives_the_same_detections():
    height, width = 64, 96
    priors = retinaface_priors(height, width)
    g = torch.Generator().manual_seed(0)
    outputs = [torch.randn(2, len(priors), k, generator=g) for k in (4, 2, 10)]
    everything = decode_retinaface(*outputs, priors, (height, width))
    top = decode_retinaface(*outputs, priors, (height, width), top_k=40)
    assert [t.shape[1] for t in top] == [40, 40, 40]
    order = everything[1].argsort(dim=1, descending=True)[:, :40]
    for full, best in zip(everything, top):
        torch.testing.assert_close(best, full.gather(1, order.view(2, 40, *[1] * (full.dim() - 2))
                                                      .expand(-1, -1, *full.shape[2:])))
    settings = dict(conf_thres=0.3, nms_thres=0.4, pre_nms_top_k=40)
    for a, b in zip(postprocess(*everything, **settings), postprocess(*top, **settings)):
        torch.testing.assert_close(a, b)


def test_decoded_outputs_back_to_each_images_pixels():
    boxes = torch.tensor([[[10., 20, 30, 40]], [[10., 20, 30, 40]]])
    landmarks = torch.tensor([[[[10., 20]] * 5], [[[10., 20]] * 5]])
    boxes, landmarks = to_image_pixels(boxes, landmarks, [0.5, 2.0])
    assert torch.equal(boxes, torch.tensor([[[20., 40, 60, 80]], [[5., 10, 15, 20]]]))
    assert torch.equal(landmarks[:, 0, 0], torch.tensor([[20., 40], [5., 10]]))
