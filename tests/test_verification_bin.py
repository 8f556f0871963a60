"""insightface verification .bin files (common/data/verification_bin.py): the real small_lfw.bin, pickles written here
as Python 2 and 3 write them, a pickle that asks to run code refused without running it, and bad files each stopped
with one line naming the file."""
import io
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image

from common.data.verification_bin import VerificationBinError, read_verification_bin


def jpeg(seed: int) -> bytes:
    gray = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return cv2.imencode('.jpg', cv2.resize(gray, (112, 112)))[1].tobytes()


def write_bin(path, bins, issame, protocol=4):
    path.write_bytes(pickle.dumps((bins, issame), protocol=protocol))
    return path


def one_line(error, path):
    message = str(error.value)
    assert '\n' not in message and message.startswith(str(path)), message
    return message


def test_real_small_lfw(shared_data):
    path = shared_data / 'recognition' / 'small_lfw.bin'
    pairs = read_verification_bin(path)
    assert len(pairs) == 10 and pairs.same.dtype == bool and pairs.same.all()
    assert len(pairs.images) == 20
    assert all(image.shape == (112, 112, 3) and image.dtype == np.uint8 for image in pairs.images)
    with open(path, 'rb') as f:
        raw = pickle.load(f, encoding='bytes')[0][3]  # the trusted file, read the plain way for comparison
    np.testing.assert_array_equal(pairs.images[3], np.asarray(Image.open(io.BytesIO(raw.tobytes())).convert('RGB')))


@pytest.mark.parametrize('protocol', [2, 4])
def test_bytes_or_arrays_and_numpy_flags(tmp_path, protocol):
    images = [jpeg(i) for i in range(20)]
    bins = [image if i % 2 else np.frombuffer(image, np.uint8) for i, image in enumerate(images)]
    issame = np.array([True, False] * 5)
    pairs = read_verification_bin(write_bin(tmp_path / 'mixed.bin', bins, issame, protocol))
    assert pairs.same.tolist() == [True, False] * 5
    np.testing.assert_array_equal(pairs.images[7], cv2.imdecode(np.frombuffer(images[7], np.uint8), 1)[:, :, ::-1])


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), 'w'))  # unpickling this would create the file


def test_pickle_asking_for_code_is_refused(tmp_path):
    marker = tmp_path / 'ran'
    path = write_bin(tmp_path / 'evil.bin', [RunsCode(marker), jpeg(0)], [True])
    with pytest.raises(VerificationBinError) as error:
        read_verification_bin(path)
    assert 'io.open' in one_line(error, path) and 'refused' in str(error.value)
    assert not marker.exists()


def test_bad_files_one_line_each(tmp_path):
    good = write_bin(tmp_path / 'good.bin', [jpeg(i) for i in range(20)], [True] * 10)
    cases = {
        'truncated.bin': (good.read_bytes()[:len(good.read_bytes()) // 2], 'truncated'),
        'text.bin': (b'10\t300\nAbel_Pintos\t1\t2\n', 'not a verification .bin'),
        'odd.bin': (pickle.dumps(([jpeg(i) for i in range(3)], [True])), 'odd count'),
        'mismatch.bin': (pickle.dumps(([jpeg(i) for i in range(4)], [True])), '4 images for 1'),
        'broken_image.bin': (pickle.dumps(([jpeg(0), b'\xff\xd8\xff broken'], [True])), 'image 1 (pair 0)'),
        'not_pair.bin': (pickle.dumps({'bins': []}), 'expected a pickle of (images, issame)'),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(VerificationBinError) as error:
            read_verification_bin(path)
        assert expected in one_line(error, path), (name, str(error.value))
