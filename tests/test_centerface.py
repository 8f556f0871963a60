"""CenterFace network (common.models.centerface) and the CenterNet losses (common.losses)."""
import pytest
import torch
import torchvision

from common.checkpoint import CheckpointError
from common.inference.detectors import decoder_for
from common.heatmaps import build_targets
from common.losses import CenterNetLoss, centernet_focal_loss, heatmap_mse_loss, masked_smooth_l1
from common.models import build_model, fuse_for_inference, load_pretrained
from common.models.centerface import HEATMAP_PRIOR_BIAS

SMALL = {'name': 'centerface', 'width_mult': 0.35, 'neck_channels': 16, 'head_conv': 16}


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return build_model(SMALL).eval()


def test_output_maps_stride_4_on_odd_sizes_and_uint8_input(model):
    images = torch.randint(0, 256, (2, 3, 61, 83), dtype=torch.uint8)
    with torch.no_grad():
        out = model(images)
        again = model(images.float())
    expected = {'hm': 1, 'wh': 2, 'off': 2, 'lm': 10}
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, c, 16, 21) for k, c in expected.items()}
    for name in expected:
        torch.testing.assert_close(out[name], again[name])
    # a fresh heatmap head predicts a low prior everywhere (bias -2.19, tiny weights)
    prior = torch.sigmoid(torch.tensor(HEATMAP_PRIOR_BIAS)).item()
    assert torch.sigmoid(out['hm']).mean().item() == pytest.approx(prior, abs=0.02)
    assert build_model({**SMALL, 'down': 8})(images)['hm'].shape[-2:] == (8, 11)


def test_normalises_bgr_into_imagenet_rgb(model):
    """The backbone sees (RGB / 255 - mean) / std with torchvision's ImageNet statistics."""
    seen = {}
    handle = model.body[0].register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    bgr = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        model(bgr)
    handle.remove()
    rgb = bgr.flip(1).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen['x'], (rgb - mean) / std, atol=1e-5, rtol=0)
    assert 'mean' not in model.state_dict()  # normalisation buffers are not saved


def test_fused_model_and_decoder_give_the_same_detections(model):
    images = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    decode = decoder_for({'name': 'centerface'})
    with torch.no_grad():
        a, b = decode(model(images), (64, 96)), decode(fused(images), (64, 96))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-3, rtol=1e-3)
    assert a[0].shape == (1, 16 * 24, 4) and a[2].shape == (1, 16 * 24, 5, 2)


def test_imagenet_backbone_and_full_weights_load(tmp_path):
    torch.manual_seed(1)
    classifier = torchvision.models.mobilenet_v2(weights=None, width_mult=0.35)
    path = tmp_path / 'mobilenet_v2.pth'
    torch.save(classifier.state_dict(), path)
    model = build_model(SMALL)
    report = load_pretrained(model, path)
    assert 'backbone' in report
    torch.testing.assert_close(model.body[5].conv[0][0].weight, classifier.features[5].conv[0][0].weight)

    other = build_model(SMALL)
    assert 'all' in load_pretrained(other, {'model': model.state_dict(), 'arch': SMALL})
    torch.testing.assert_close(other.heads['lm'][0].weight, model.heads['lm'][0].weight)

    with pytest.raises(CheckpointError, match='does not fit'):  # another width multiplier
        load_pretrained(build_model({**SMALL, 'width_mult': 1.0}), path)


# ---------------------------------------------------------------------------------------------------- losses

def test_regression_loss_counts_zero_and_negative_targets():
    pred = torch.zeros(3, 2)
    target = torch.tensor([[-0.5, 0.0], [0.0, 0.0], [0.3, 0.0]])
    loss = masked_smooth_l1(pred, target, beta=0.1)
    # every element counts: (|-0.5| - 0.05) + (0.3 - 0.05), averaged over all 6 elements
    assert loss.item() == pytest.approx((0.45 + 0.25) / 6)
    # a negative target alone gives a positive loss, and a zero target with a wrong prediction too
    assert masked_smooth_l1(torch.zeros(1, 1), torch.tensor([[-2.0]])).item() > 0
    assert masked_smooth_l1(torch.ones(1, 1), torch.zeros(1, 1)).item() > 0
    # the mask selects rows; masked-out rows (however wrong) do not count; an empty mask gives 0
    mask = torch.tensor([True, False, False])
    assert masked_smooth_l1(pred, target, mask, beta=0.1).item() == pytest.approx(0.45 / 2)
    assert masked_smooth_l1(pred, target, torch.zeros(3, dtype=torch.bool)).item() == 0


def test_heatmap_losses_prefer_the_right_answer():
    heat = torch.zeros(1, 1, 9, 9)
    heat[0, 0, 4, 4] = 1.0
    heat[0, 0, 4, 5] = 0.6
    good = torch.logit(heat.clamp(0.01, 0.99))
    bad = torch.zeros_like(heat)
    for loss in (centernet_focal_loss, heatmap_mse_loss):
        assert loss(good, heat) < loss(bad, heat)
        assert torch.isfinite(loss(torch.full_like(heat, 30.0), heat))
    # the focal loss down-weights the negative next to the peak: predicting 0.6 there costs less than far away
    near, far = bad.clone(), bad.clone()
    near[0, 0, 4, 5], far[0, 0, 0, 0] = 3.0, 3.0
    assert centernet_focal_loss(near, heat) < centernet_focal_loss(far, heat)


def test_centernet_loss_trains_every_head(model):
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    targets = [{'boxes': torch.tensor([[8.0, 8.0, 40.0, 44.0]]), 'landmarks': torch.rand(1, 5, 2) * 30 + 10,
                'landmark_valid': torch.tensor([True])},
               {'boxes': torch.tensor([[30.0, 2.0, 50.0, 30.0]]), 'landmarks': torch.zeros(1, 5, 2),
                'landmark_valid': torch.tensor([False])}]
    net = build_model(SMALL).train()
    outputs = net(images)
    encoded = build_targets(targets, outputs['hm'].shape[-2:])
    for hm_loss in ('focal', 'mse'):
        loss, parts = CenterNetLoss(hm_loss=hm_loss)(outputs, encoded)
        assert set(parts) == {'hm', 'off', 'wh', 'lm'} and all(torch.isfinite(v) for v in parts.values())
    loss.backward()
    for name in ('hm', 'wh', 'off', 'lm'):
        assert net.heads[name][2].weight.grad.abs().sum() > 0, name
    with pytest.raises(ValueError):
        CenterNetLoss(hm_loss='l1')
