"""RetinaFace network: reference state_dict layout, pretrained loading, BatchNorm folding, and the real checkpoint
finding the six faces of the shared group photo."""
import cv2
import numpy as np
import pytest
import torch

from common.anchors import retinaface_priors
from common.checkpoint import CheckpointError
from common.models import build_model, fuse_for_inference, load_pretrained
from common.anchors import decode_retinaface
from common.inference.nms import postprocess
from common.visualize import draw_detections

MNET = {'name': 'retinaface', 'network': 'mobile0.25'}


@pytest.fixture
def trained_mnet(shared_data):
    """The shared Pytorch_Retinaface MobileNet0.25 checkpoint in eval mode."""
    path = shared_data / 'weights' / 'retinaface_mobilenet0.25_Final.pth'
    model = build_model(MNET)
    model.load_state_dict(torch.load(path, map_location='cpu', weights_only=True), strict=True)
    return model.eval()


def _set_random_bn_statistics(model, seed=0):
    """Fresh BatchNorms are the identity in eval mode; random statistics make BN folding tests meaningful."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_mobilenet_strict_load_and_parameter_count(shared_data):
    state = torch.load(shared_data / 'weights' / 'retinaface_mobilenet0.25_Final.pth', map_location='cpu',
                       weights_only=True)
    model = build_model(MNET)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert list(model.state_dict()) == list(state)  # same key order as the reference layout
    assert sum(p.numel() for p in model.parameters()) == 426_608
    assert 'mean' not in model.state_dict()  # the input mean is a non-persistent buffer


def test_load_pretrained_accepts_module_prefix_and_our_checkpoint(shared_data, tmp_path):
    state = torch.load(shared_data / 'weights' / 'retinaface_mobilenet0.25_Final.pth', map_location='cpu',
                       weights_only=True)
    prefixed = tmp_path / 'ddp.pth'
    torch.save({f'module.{k}': v for k, v in state.items()}, prefixed)
    model = build_model(MNET)
    assert 'loaded all 300 tensors' in load_pretrained(model, prefixed)
    assert torch.equal(model.fpn.merge1[0].weight, state['fpn.merge1.0.weight'])

    ours = tmp_path / 'ours.pt'
    torch.save({'model': model.state_dict(), 'arch': MNET, 'epoch': 3}, ours)
    again = build_model(MNET)
    load_pretrained(again, ours)
    assert torch.equal(again.LandmarkHead[2].conv1x1.bias, state['LandmarkHead.2.conv1x1.bias'])


def test_imagenet_backbone_tar_loads_into_body(shared_data):
    tar = torch.load(shared_data / 'weights' / 'mobilenetV1X0.25_pretrain.tar', map_location='cpu', weights_only=True)
    model = build_model(MNET)
    head_before = model.ClassHead[0].conv1x1.weight.clone()
    message = load_pretrained(model, shared_data / 'weights' / 'mobilenetV1X0.25_pretrain.tar')
    assert '162 backbone tensors' in message
    for key, value in tar['state_dict'].items():
        name = key.removeprefix('module.')
        if not name.startswith('fc.'):
            assert torch.equal(model.body.state_dict()[name], value), name
    assert torch.equal(model.ClassHead[0].conv1x1.weight, head_before)  # the detector part is untouched


def test_mismatched_weights_raise_with_key_names(tmp_path):
    path = tmp_path / 'r50.pth'
    torch.save(build_model({'name': 'retinaface', 'network': 'resnet50'}).state_dict(), path)
    model = build_model(MNET)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r'r50\.pth.*missing.*body\.stage1'):
        load_pretrained(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_forward_shapes_uint8_and_train_mode():
    torch.manual_seed(0)
    model = build_model(MNET)
    images = torch.randint(0, 256, (2, 3, 100, 130), dtype=torch.uint8)
    # ceil(100/8)*ceil(130/8) + ceil(100/16)*ceil(130/16) + ceil(100/32)*ceil(130/32) cells, 2 anchors each
    num_priors = 2 * (13 * 17 + 7 * 9 + 4 * 5)
    loc, conf, landm = model.train()(images)
    assert loc.shape == (2, num_priors, 4) and conf.shape == (2, num_priors, 2) and landm.shape == (2, num_priors, 10)
    assert len(retinaface_priors(100, 130)) == num_priors
    model.eval()
    with torch.no_grad():
        from_uint8 = model(images)
        from_float = model(images.float())
    for a, b in zip(from_uint8, from_float):
        assert torch.equal(a, b)
    assert not torch.allclose(from_uint8[1].softmax(-1).sum(-1), from_uint8[1].sum(-1))  # raw logits, no softmax


def test_resnet50_layout_and_forward():
    model = build_model({'name': 'retinaface', 'network': 'resnet50'}).eval()
    keys = model.state_dict().keys()
    assert 'body.layer2.0.conv1.weight' in keys and 'body.layer4.2.bn3.running_var' in keys
    assert 'body.fc.weight' not in keys
    assert model.fpn.output1[0].weight.shape == (256, 512, 1, 1)
    assert model.fpn.output3[0].weight.shape == (256, 2048, 1, 1)
    with torch.no_grad():
        loc, conf, landm = model(torch.zeros(1, 3, 64, 64))
    assert loc.shape == (1, len(retinaface_priors(64, 64)), 4) and landm.shape[-1] == 10


@pytest.mark.parametrize('network,size', [('mobile0.25', (96, 120)), ('resnet50', (64, 64))])
def test_fuse_for_inference_same_outputs(network, size):
    torch.manual_seed(0)
    model = build_model({'name': 'retinaface', 'network': network})
    _set_random_bn_statistics(model)
    model.eval()
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is left as it was
    images = torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8)
    with torch.no_grad():
        for a, b in zip(model(images), fused(images)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * a.abs().max().item())


def test_build_model_rejects_unknown_arch():
    with pytest.raises(ValueError, match='retinaface'):
        build_model({'name': 'nope'})
    with pytest.raises(ValueError, match='mobile0.25'):
        build_model({'name': 'retinaface', 'network': 'vgg'})


def test_finds_six_faces_in_group_photo(shared_data, trained_mnet, tmp_path):
    image = cv2.imread(str(shared_data / 'photos' / 'group_6_faces.jpg'))
    height, width = image.shape[:2]
    batch = torch.from_numpy(image).permute(2, 0, 1)[None]
    fused = fuse_for_inference(trained_mnet)
    with torch.no_grad():
        outputs = trained_mnet(batch)
        fused_outputs = fused(batch)
    for a, b in zip(outputs, fused_outputs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * a.abs().max().item())

    boxes, scores, landmarks = decode_retinaface(*outputs, retinaface_priors(height, width), (height, width))
    result = postprocess(boxes, scores, landmarks, conf_thres=0.5, nms_thres=0.4)[0]
    assert len(result['boxes']) == 6
    assert (result['scores'] > 0.9).all()
    b, lm = result['boxes'], result['landmarks']
    sizes = b[:, 2:] - b[:, :2]
    assert (sizes > 60).all() and (sizes < 250).all()  # the six faces are about 100 x 140 px
    inside = (lm >= b[:, None, :2]) & (lm <= b[:, None, 2:])
    assert inside.all()
    # eyes above the mouth corners, left eye left of the right eye (image coordinates)
    assert (lm[:, 0, 1] < lm[:, 3, 1]).all() and (lm[:, 0, 0] < lm[:, 1, 0]).all()

    drawn = draw_detections(image, result['boxes'], result['scores'], result['landmarks'])
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)
    x1, y1 = result['boxes'][0].round().int().tolist()[:2]
    assert tuple(drawn[y1, x1]) == (0, 255, 0)  # the box corner is drawn in green
