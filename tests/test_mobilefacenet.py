"""MobileFaceNet (common/models/mobilefacenet.py): the released checkpoint loads key for key, and the network gives
what its architecture as published (../shared/REFERENCE.md, written again below in plain functional form) gives on
real aligned faces; the variants trained from scratch."""
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.align import crop_face
from conftest import SHARED_DATA as SHARED
from common.checkpoint import load_checkpoint
from common.models.mobilefacenet import MobileFaceNet, released_state_dict

RELEASED = 'weights/mobilefacenet_068.ckpt'
RETINAFACE = 'weights/retinaface_mobilenet0.25_Final.pth'
PHOTOS = ('people/obama/obama.jpg', 'people/rose_leslie/img2.jpg', 'people/kit_harington/john2.jpeg',
          'people_test/kit_with_rose.jpg')


def reference_forward(state: dict, x: torch.Tensor) -> torch.Tensor:
    """The published MobileFaceNet, straight from its description, on the release's state dict (eval mode)."""
    def bn(x, prefix):
        return F.batch_norm(x, state[f'{prefix}.running_mean'], state[f'{prefix}.running_var'],
                            state[f'{prefix}.weight'], state[f'{prefix}.bias'], False, 0.0, 1e-5)

    def conv_block(x, name, stride=1, padding=0, depthwise=False, linear=False):
        weight = state[f'{name}.conv.weight']
        x = bn(F.conv2d(x, weight, None, stride, padding, 1, x.shape[1] if depthwise else 1), f'{name}.bn')
        return x if linear else F.prelu(x, state[f'{name}.prelu.weight'])

    x = conv_block(x, 'conv1', 2, 1)
    x = conv_block(x, 'dw_conv1', 1, 1, depthwise=True)
    index, in_ch = 0, 64
    for t, c, n, s in ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)):
        for i in range(n):
            p, stride = f'blocks.{index}.conv', s if i == 0 else 1
            y = F.prelu(bn(F.conv2d(x, state[f'{p}.0.weight']), f'{p}.1'), state[f'{p}.2.weight'])
            y = F.conv2d(y, state[f'{p}.3.weight'], None, stride, 1, 1, y.shape[1])
            y = F.prelu(bn(y, f'{p}.4'), state[f'{p}.5.weight'])
            y = bn(F.conv2d(y, state[f'{p}.6.weight']), f'{p}.7')
            x = x + y if stride == 1 and in_ch == c else y
            index, in_ch = index + 1, c
    x = conv_block(x, 'conv2')
    x = conv_block(x, 'linear7', depthwise=True, linear=True)
    return conv_block(x, 'linear1', linear=True).flatten(1)


def sphereface_faces(shared_data, photos=PHOTOS, max_size=400) -> np.ndarray:
    """(N, 112, 96, 3) BGR crops of every face the shared RetinaFace finds in the photos (long side <= max_size:
    quick, and the faces are real faces all the same)."""
    from common.inference.detectors import FaceDetector
    from common.inference.load import load_detector_model
    model, arch = load_detector_model(shared_data / RETINAFACE, 'mobile0.25')
    detector = FaceDetector(model, arch, 'cpu', conf_thres=0.5, max_size=max_size)
    crops = []
    for photo in photos:
        image = cv2.imread(str(shared_data / 'recognition' / photo))
        for landmarks in detector([image])[0]['landmarks']:
            crops.append(crop_face(image, landmarks, 'sphereface'))
    return np.stack(crops)


def network_input(crops: np.ndarray) -> torch.Tensor:
    """The release's input convention: RGB, (p - 127.5) / 128, NCHW."""
    return (torch.from_numpy(crops[..., ::-1].copy()).permute(0, 3, 1, 2).float() - 127.5) / 128


def test_released_checkpoint_loads_as_it_is(shared_data):
    state = released_state_dict(load_checkpoint(shared_data / RELEASED))
    model = MobileFaceNet()
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 999_552
    assert released_state_dict({'model': state}) is None and released_state_dict({'net_state_dict': {}}) is None


@pytest.mark.slow
def test_released_network_equals_the_published_architecture(shared_data):
    state = released_state_dict(load_checkpoint(shared_data / RELEASED))
    model = MobileFaceNet()
    model.load_state_dict(state)
    faces = network_input(sphereface_faces(shared_data))
    assert len(faces) >= 5
    with torch.no_grad():
        ours, reference = model.eval()(faces), reference_forward(state, faces)
    assert ours.shape == (len(faces), 128)
    assert F.cosine_similarity(ours, reference).min() >= 0.99999
    # and they are embeddings that tell people apart: the crops of one photo are not all alike
    unit = F.normalize(ours)
    assert (unit @ unit.T).fill_diagonal_(0).max() < 0.9


def test_variants_from_scratch():
    for channels, size, kernel in ((3, (112, 96), (7, 6)), (3, (112, 112), (7, 7)), (1, (128, 128), (8, 8))):
        model = MobileFaceNet(256, channels, size).eval()
        assert tuple(model.linear7.conv.kernel_size) == kernel
        with torch.no_grad():
            assert model(torch.randn(2, channels, *size)).shape == (2, 256)
    assert sum(p.numel() for p in MobileFaceNet().parameters()) == 999_552
    with pytest.raises(ValueError, match='multiples of 16'):
        MobileFaceNet(input_size=(112, 100))


@pytest.mark.slow
def test_train_recognition_mobilefacenet_from_scratch(tmp_path, capsys):
    """--backbone mobilefacenet trains from scratch like the other backbones under its released input convention,
    recorded in the checkpoint, which --evaluate then needs no flags for."""
    import bad_input
    from common.synthetic.identities import make_identities
    data = make_identities(tmp_path / 'ids', seed=1, identities=3, images_per_identity=4, test_identities=20,
                           test_images_per_identity=2, pairs_per_set=1)
    tests = ['--test-root', data / 'test', '--test-list', data / 'pairs.txt', '--workers', 0, '--device', 'cpu']
    status, _, err = bad_input.run_main('train_recognition', [
        '--data-root', data / 'train', *tests, '--epochs', 1, '--batch-size', 6, '--backbone', 'mobilefacenet',
        '--out', tmp_path / 'run'], capsys)
    assert status == 0, err
    saved = load_checkpoint(tmp_path / 'run' / 'last.pt')
    assert {k: saved['arch'][k] for k in ('name', 'backbone', 'input', 'embedding_size')} == {
        'name': 'recognition', 'backbone': 'mobilefacenet', 'input': 'rgb112x96', 'embedding_size': 128}
    assert saved['model']['linear7.conv.weight'].shape == (512, 1, 7, 6)
    status, out, err = bad_input.run_main('train_recognition', [
        '--evaluate', '--weights', tmp_path / 'run' / 'last.pt', *tests, '--out', tmp_path / 'eval'], capsys)
    assert status == 0 and 'acc_10fold' in out, err


def test_train_recognition_flags_and_the_released_file_as_pretrained(capsys):
    """--input rgb112 gives the 112 x 112 variant, --embedding-size another width; --pretrained (load_pretrained)
    takes the released file as it is; the released input is refused for the square-input backbones."""
    import train_recognition
    from common.models import load_pretrained
    from common.models.recognition import build_recognition
    args = train_recognition.parse_args(['--backbone', 'mobilefacenet'])
    assert (args.input, args.embedding_size) == ('rgb112x96', 128)
    args = train_recognition.parse_args(['--backbone', 'mobilefacenet', '--input', 'rgb112', '--embedding-size', '64'])
    model = build_recognition({'name': 'recognition', 'backbone': 'mobilefacenet', 'input': args.input,
                               'embedding_size': args.embedding_size})
    assert tuple(model.linear7.conv.kernel_size) == (7, 7) and model.linear1.conv.out_channels == 64
    assert (train_recognition.parse_args([]).input, train_recognition.parse_args([]).embedding_size) == ('gray128', 512)
    with pytest.raises(SystemExit):
        train_recognition.parse_args(['--input', 'rgb112x96'])
    assert 'is for --backbone mobilefacenet' in capsys.readouterr().err
    if (SHARED / RELEASED).is_file():
        model = build_recognition({'name': 'recognition', 'backbone': 'mobilefacenet', 'input': 'rgb112x96',
                                   'embedding_size': 128})
        assert 'loaded all 333 tensors' in load_pretrained(model, SHARED / RELEASED)
