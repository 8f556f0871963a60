"""Pascal VOC on disk (common/voc.py): the XML reader and its errors, the dataset over VOCdevkit/VOC<year>, the
training / test transforms, and the synthetic VOC and ImageFolder sets (common/object_drawing.py)."""
import hashlib

import cv2
import numpy as np
import pytest

from common.synthetic.objects import CLASSES, make_imagefolder, make_object_image, make_voc
from common.data.voc import (AnnotationError, VOCDataset, VOCTestTransform, VOCTrainTransform, read_annotation,
                        write_annotation)

XML = """<annotation>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <object>
    <name>dog</name><difficult>0</difficult>
    <bndbox><xmin>48</xmin><ymin>240</ymin><xmax>195</xmax><ymax>371</ymax></bndbox>
  </object>
  <object>
    <name>person</name><difficult>1</difficult>
    <bndbox><xmin>8</xmin><ymin>12</ymin><xmax>352</xmax><ymax>498</ymax></bndbox>
  </object>
</annotation>
"""


@pytest.fixture(scope='module')
def synthetic_voc(tmp_path_factory):
    return make_voc(tmp_path_factory.mktemp('voc'), num_images=9, seed=5)


def test_read_annotation_continuous_boxes_and_difficult(tmp_path):
    (tmp_path / '000005.xml').write_text(XML)
    a = read_annotation(tmp_path / '000005.xml')
    assert a.image_id == '000005' and a.names == ['dog', 'person'] and (a.width, a.height) == (500, 375)
    np.testing.assert_array_equal(a.boxes, [[47, 239, 195, 371], [7, 11, 352, 498]])  # xmin - 1 .. xmax
    assert a.difficult.tolist() == [False, True]


@pytest.mark.parametrize('broken, where, says', [
    (XML.replace('</object>\n  <object>', '</objet>\n  <object>', 1), ':6:', 'not well-formed XML'),
    (XML.replace('<xmax>195</xmax>', ''), ':3:', 'numeric xmin ymin xmax ymax'),
    (XML.replace('<xmin>8</xmin>', '<xmin>eight</xmin>'), ':7:', "'eight'"),
    (XML.replace('<name>person</name>', ''), ':7:', 'without a <name>'),
    (XML.replace('<xmax>195</xmax>', '<xmax>20</xmax>'), ':3:', 'empty box'),
    (XML.replace('<difficult>1</difficult>', '<difficult>yes</difficult>'), ':7:', '<difficult> 0 or 1'),
])
def test_malformed_annotation_names_file_and_line(tmp_path, broken, where, says):
    path = tmp_path / '000005.xml'
    path.write_text(broken)
    with pytest.raises(AnnotationError) as error:
        read_annotation(path)
    assert str(error.value).startswith(f'{path}{where}') and says in str(error.value), str(error.value)


def test_write_annotation_round_trip(tmp_path):
    """The writer marks the pixels a continuous box touches (1-based inclusive); the reader gives them back."""
    objects = [{'name': 'car', 'box': np.array([10.3, 20.0, 55.5, 60.9]), 'difficult': True, 'truncated': False}]
    write_annotation(tmp_path / 'x.xml', 'x', 100, 80, objects)
    a = read_annotation(tmp_path / 'x.xml')
    np.testing.assert_array_equal(a.boxes, [[10, 20, 56, 61]])
    assert a.names == ['car'] and a.difficult.tolist() == [True] and (a.width, a.height) == (100, 80)


def test_synthetic_voc_layout_and_dataset(synthetic_voc):
    root = synthetic_voc / 'VOC2007'
    main = root / 'ImageSets' / 'Main'
    trainval, test = main.joinpath('trainval.txt').read_text().split(), main.joinpath('test.txt').read_text().split()
    assert len(trainval) == 6 and len(test) == 3 and not set(trainval) & set(test)
    assert sorted(main.joinpath('train.txt').read_text().split() + main.joinpath('val.txt').read_text().split()) == \
        sorted(trainval)
    dataset = VOCDataset(root, 'trainval', verbose=False)
    assert set(dataset.classes) <= set(CLASSES) and list(dataset.classes) == sorted(dataset.classes)
    image, target = dataset[0]
    assert image.dtype == np.uint8 and image.ndim == 3
    assert target['boxes'].shape == (len(target['labels']), 4) and target['difficult'].dtype == bool
    # per-class lists in the devkit's format: 1 present, 0 only difficult, -1 absent
    first = read_annotation(root / 'Annotations' / f'{trainval[0]}.xml')
    for name in CLASSES:
        flags = dict(line.split() for line in main.joinpath(f'{name}_trainval.txt').read_text().splitlines())
        present = [not d for n, d in zip(first.names, first.difficult) if n == name]
        assert int(flags[trainval[0]]) == (1 if any(present) else 0 if present else -1)


def test_dataset_classes_skips_and_errors(synthetic_voc, tmp_path, capsys):
    """Unreadable images are named, skipped and counted; an object of a class outside `classes` is an error naming
    its file; the class list of real VOC is given, of a custom set read from its annotations."""
    import shutil
    root = tmp_path / 'VOC2007'
    shutil.copytree(synthetic_voc / 'VOC2007', root)
    ids = (root / 'ImageSets' / 'Main' / 'trainval.txt').read_text().split()
    (root / 'JPEGImages' / f'{ids[0]}.jpg').write_bytes(b'not a jpeg')
    (root / 'JPEGImages' / f'{ids[1]}.jpg').unlink()
    dataset = VOCDataset(root, 'trainval')
    assert len(dataset) == 4 and len(dataset.skipped) == 2
    assert 'skipped 2 unreadable images' in capsys.readouterr().out
    with pytest.raises(AnnotationError, match=r'\.xml: object class .* is not one of the 1 classes'):
        VOCDataset(root, 'trainval', classes=['sofa'], verbose=False)
    with pytest.raises(FileNotFoundError, match='image set not found'):
        VOCDataset(root, 'nosuchsplit', verbose=False)


def coloured_boxes_image():
    """A grey 300 x 200 image with two solid rectangles of known colours, and their boxes."""
    image = np.full((200, 300, 3), 128, np.uint8)
    boxes = np.array([[20, 30, 80, 90], [150, 100, 290, 190]], np.float32)
    for (x1, y1, x2, y2), colour in zip(boxes.astype(int), ((0, 0, 255), (255, 0, 0))):
        image[y1:y2, x1:x2] = colour
    target = {'boxes': boxes, 'labels': np.array([3, 1]), 'difficult': np.array([False, True]), 'name': 'x',
              'scale': 1.0}
    return image, target


def test_train_transform_keeps_boxes_on_their_pixels():
    """After pad, crop, flip and resize, the pixels inside each box are still its rectangle's colour, and the
    labels and difficult flags stay with their boxes."""
    transform = VOCTrainTransform(128, distort=False)
    for seed in range(12):
        image, target = coloured_boxes_image()
        out, t = transform(image, target, np.random.default_rng(seed))
        assert out.shape == (128, 128, 3) and len(t['boxes']) == len(t['labels']) == len(t['difficult'])
        for box, label, difficult in zip(t['boxes'], t['labels'], t['difficult']):
            x1, y1, x2, y2 = np.round(box).astype(int)
            inner = out[y1 + 2:y2 - 2, x1 + 2:x2 - 2].reshape(-1, 3).astype(int)
            if len(inner) == 0:
                continue
            expected = (0, 0, 255) if label == 3 else (255, 0, 0)
            assert difficult == (label == 1)
            assert np.abs(inner.mean(0) - expected).max() < 30, (seed, box)


def test_test_transform_scales_back_to_the_image():
    image, target = coloured_boxes_image()
    out, t = VOCTestTransform(150)(image, target)
    assert out.shape == (150, 150, 3) and t['scale'] == 0.5 and t['image_size'] == (200, 300)
    np.testing.assert_allclose(t['boxes'] / t['scale'], target['boxes'])
    assert (out[101:, :] == (104, 117, 123)).all()  # the padding below the image is the mean colour


def test_synthetic_scenes_are_reproducible_and_varied():
    a, objects = make_object_image(np.random.default_rng([0, 7, 3]))
    b, _ = make_object_image(np.random.default_rng([0, 7, 3]))
    assert hashlib.md5(a.tobytes()).digest() == hashlib.md5(b.tobytes()).digest()
    sizes, names, difficult = [], set(), 0
    for index in range(12):
        _, objects = make_object_image(np.random.default_rng([0, 7, index]))
        for o in objects:
            x1, y1, x2, y2 = o['box']
            sizes.append(np.sqrt((x2 - x1) * (y2 - y1)))
            names.add(o['name'])
            difficult += o['difficult']
    assert names == set(CLASSES) and min(sizes) < 30 and max(sizes) > 150 and difficult >= 2
    assert len(sizes) >= 3 * 12  # several objects per image


def test_synthetic_imagefolder(tmp_path):
    root = make_imagefolder(tmp_path, num_images=12, seed=0, size=64)
    for split, count in (('train', 12), ('val', 6)):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == sorted(CLASSES)
        files = list((root / split).rglob('*.jpg'))
        assert len(files) == count and cv2.imread(str(files[0])).shape == (64, 64, 3)
