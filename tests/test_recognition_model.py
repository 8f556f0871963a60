"""Recognition networks and margin heads (common/models/recognition.py) and the focal loss: shapes and sizes, and
the heads' logits at known angles."""
import math

import pytest
import torch
import torch.nn.functional as F

from common.losses import SoftmaxFocalLoss
from common.models import build_model
from common.models.recognition import ArcFace, CosFace, FaceMobileNet, IRSEResNet


def parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_face_mobilenet_gray128_and_rgb112():
    model = build_model({'name': 'recognition', 'backbone': 'fmobile', 'input': 'gray128'}).eval()
    assert isinstance(model, FaceMobileNet)
    assert 1.8e6 < parameters(model) < 2.2e6  # "about 2M": the 2x2 map left by the 7x7 conv feeds 2048 values
    with torch.no_grad():
        assert model(torch.randn(2, 1, 128, 128)).shape == (2, 512)
        rgb = build_model({'name': 'recognition', 'backbone': 'fmobile', 'input': 'rgb112', 'embedding_size': 128})
        assert rgb.eval()(torch.randn(2, 3, 112, 112)).shape == (2, 128)
        assert rgb.linear.in_features == 512  # on 112 px the 7x7 conv is global, as in MobileFaceNet


def test_irse_resnet_depths_and_inputs():
    small = build_model({'name': 'recognition', 'backbone': 'resnet', 'resnet_depth': 18, 'embedding_size': 64})
    assert isinstance(small, IRSEResNet)
    with torch.no_grad():
        assert small.eval()(torch.randn(2, 1, 128, 128)).shape == (2, 64)
    rgb = build_model({'name': 'recognition', 'backbone': 'resnet', 'resnet_depth': 18, 'input': 'rgb112'})
    with torch.no_grad():
        assert rgb.eval()(torch.randn(1, 3, 112, 112)).shape == (1, 512)
    assert len(small.body) == 8 and small.output[3].in_features == 512 * 8 * 8  # 4 stages of 2 blocks, 128 / 16
    with pytest.raises(ValueError, match='depth'):
        IRSEResNet(depth=42)


def head_at_angles(head_class, angles_deg, **options):
    """A head with two classes at 0 and 90 degrees in a 2-d embedding space; embeddings at the given angles from
    class 0, all labelled class 0. Returns the (N, 2) logits."""
    head = head_class(2, 2, **options)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))  # lengths do not matter: normalised
    radians = torch.tensor(angles_deg, dtype=torch.float64).deg2rad()
    embeddings = torch.stack([radians.cos(), radians.sin()], 1).float() * 7
    return head(embeddings, torch.zeros(len(angles_deg), dtype=torch.long))


def test_arcface_logits_at_known_angles():
    s, m = 30.0, 0.5
    logits = head_at_angles(ArcFace, [60.0, 10.0, 170.0], s=s, m=m)
    theta = torch.tensor([60.0, 10.0, 170.0], dtype=torch.float64).deg2rad()
    # the true class: s cos(theta + m) while theta + m < pi; past theta = pi - m, s (cos(theta) - m sin(m))
    expected = [s * math.cos(theta[0] + m), s * math.cos(theta[1] + m), s * (math.cos(theta[2]) - m * math.sin(m))]
    assert logits[:, 0].tolist() == pytest.approx(expected, abs=1e-4)
    assert math.degrees(math.pi - m) < 170  # the third angle is in the fallback region
    # the other class: s cos(angle to it), no margin
    assert logits[:, 1].tolist() == pytest.approx([s * math.cos(theta[0] - math.pi / 2),
                                                   s * math.cos(theta[1] - math.pi / 2),
                                                   s * math.cos(theta[2] - math.pi / 2)], abs=1e-4)


def test_arcface_easy_margin_only_where_cosine_is_positive():
    s, m = 30.0, 0.5
    logits = head_at_angles(ArcFace, [60.0, 100.0], s=s, m=m, easy_margin=True)
    assert logits[0, 0].item() == pytest.approx(s * math.cos(math.radians(60) + m), abs=1e-4)
    assert logits[1, 0].item() == pytest.approx(s * math.cos(math.radians(100)), abs=1e-4)


def test_cosface_logits_at_known_angles():
    logits = head_at_angles(CosFace, [0.0, 45.0, 120.0], s=30.0, m=0.4)
    assert logits[:, 0].tolist() == pytest.approx([30 * (1 - 0.4), 30 * (math.cos(math.pi / 4) - 0.4),
                                                   30 * (-0.5 - 0.4)], abs=1e-4)


def test_margin_gradients_are_finite_at_zero_angle():
    head = ArcFace(4, 3)
    embeddings = F.normalize(head.weight.detach()[:2].clone(), dim=1).requires_grad_()  # exactly on classes 0, 1
    loss = F.cross_entropy(head(embeddings, torch.tensor([0, 1])), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(embeddings.grad).all() and torch.isfinite(head.weight.grad).all()


def test_focal_loss_values():
    logits = torch.tensor([[0.0, 0.0], [3.0, -1.0]])
    labels = torch.tensor([0, 0])
    ce = F.cross_entropy(logits, labels, reduction='none')
    assert SoftmaxFocalLoss(0.0)(logits, labels).item() == pytest.approx(ce.mean().item())
    p = torch.exp(-ce)
    assert SoftmaxFocalLoss(2.0)(logits, labels).item() == pytest.approx(((1 - p) ** 2 * ce).mean().item())
    assert SoftmaxFocalLoss(2.0)(logits[:1], labels[:1]).item() == pytest.approx(0.25 * math.log(2))
