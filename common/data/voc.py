"""Pascal VOC on disk: the annotation XML reader (and writer, for the synthetic set), the detection dataset over
VOCdevkit/VOC<year>, and the training / test transforms of train_retinanet.py.

Layout (the official VOCdevkit):

    VOCdevkit/VOC2007/Annotations/<id>.xml         <object><name>, <difficult>, <bndbox> xmin ymin xmax ymax
    VOCdevkit/VOC2007/JPEGImages/<id>.jpg
    VOCdevkit/VOC2007/ImageSets/Main/<split>.txt   one image id per line (trainval, test, ...)

VOC boxes are 1-based inclusive pixel indices; in memory they are continuous coordinates (pixel i spans [i, i+1)):
x1 = xmin - 1, x2 = xmax, so a box's width is xmax - xmin + 1 as the devkit counts it. A sample is
`(image BGR uint8 HxWx3, target)` with target {'boxes' (N,4) float32 x1y1x2y2, 'labels' (N,) int64 class indices,
'difficult' (N,) bool, 'name' image id, 'scale' input / original}. Difficult objects are kept and flagged: the
evaluation ignores them, training ignores the anchors they match (train_retinanet.py --train-difficult learns them).
"""
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from .images import image_problem, scan_images
from .transforms import horizontal_flip, pad_to_square, photometric_distort, random_square_crop, resize_square
from .transforms import scale_target, select_faces

VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'diningtable',
               'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')


class AnnotationError(ValueError):
    """A VOC annotation that cannot be read; the message starts with `<path>:<line>:` (or `<path>:`)."""


@dataclass
class Annotation:
    """The objects of one image as its XML file lists them."""
    image_id: str
    names: list            # class name per object
    boxes: np.ndarray      # float32 (N,4) continuous x1,y1,x2,y2 (xmin - 1, ymin - 1, xmax, ymax)
    difficult: np.ndarray  # bool (N,)
    width: int = 0         # <size> of the image (0 when the file has none)
    height: int = 0


def _line_of(path: Path, text: str, element_tag: str, occurrence: int) -> int:
    """1-based line of the `occurrence`-th `<element_tag>` in the file (ElementTree keeps no line numbers)."""
    start = -1
    for _ in range(occurrence + 1):
        start = text.find(f'<{element_tag}', start + 1)
        if start < 0:
            return 1
    return text.count('\n', 0, start) + 1


def read_annotation(path) -> Annotation:
    """Parse one VOC XML file. Raises FileNotFoundError for a missing file and AnnotationError naming the file and
    line for broken XML, an object without name or bndbox, or a coordinate that is not a number. Boxes of zero or
    negative size are an error too: the devkit would count them, so they are not silently dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'annotation not found: {path}')
    text = path.read_text(encoding='utf-8', errors='replace')
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as e:
        line, column = e.position
        raise AnnotationError(f'{path}:{line}: not well-formed XML (column {column}): expected a VOC annotation'
                              ) from None
    names, boxes, difficult = [], [], []
    for index, obj in enumerate(root.iter('object')):
        where = f'{path}:{_line_of(path, text, "object", index)}'
        name = (obj.findtext('name') or '').strip()
        if not name:
            raise AnnotationError(f'{where}: <object> without a <name>')
        box = obj.find('bndbox')
        values = [box.findtext(k) if box is not None else None for k in ('xmin', 'ymin', 'xmax', 'ymax')]
        try:
            xmin, ymin, xmax, ymax = (float(v) for v in values)
        except (TypeError, ValueError):
            raise AnnotationError(f'{where}: <object> {name!r}: expected <bndbox> with numeric xmin ymin xmax ymax, '
                                  f'got {values}') from None
        if xmax < xmin or ymax < ymin:
            raise AnnotationError(f'{where}: <object> {name!r}: empty box xmin {xmin:g} xmax {xmax:g} '
                                  f'ymin {ymin:g} ymax {ymax:g} (expected xmin <= xmax, ymin <= ymax)')
        flag = (obj.findtext('difficult') or '0').strip()
        if flag not in ('0', '1'):
            raise AnnotationError(f'{where}: <object> {name!r}: expected <difficult> 0 or 1, got {flag!r}')
        names.append(name)
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
        difficult.append(flag == '1')
    size = root.find('size')

    def dimension(key):
        try:
            return int(float(size.findtext(key))) if size is not None else 0
        except (TypeError, ValueError):
            return 0
    return Annotation(path.stem, names, np.array(boxes, np.float32).reshape(-1, 4), np.array(difficult, bool),
                      dimension('width'), dimension('height'))


def write_annotation(path, image_id: str, width: int, height: int, objects: list[dict], folder: str = 'VOC2007'):
    """A VOC XML file for `objects` [{'name', 'box' continuous x1y1x2y2, 'difficult', 'truncated'}]; boxes are
    written as the devkit's 1-based inclusive pixels (the pixels the box touches)."""
    lines = ['<annotation>', f'\t<folder>{folder}</folder>', f'\t<filename>{image_id}.jpg</filename>',
             '\t<source><database>facekit synthetic</database></source>',
             f'\t<size><width>{width}</width><height>{height}</height><depth>3</depth></size>',
             '\t<segmented>0</segmented>']
    for obj in objects:
        x1, y1, x2, y2 = obj['box']
        xmin, ymin = int(np.floor(x1)) + 1, int(np.floor(y1)) + 1
        xmax, ymax = int(np.ceil(x2)), int(np.ceil(y2))
        lines += ['\t<object>', f'\t\t<name>{obj["name"]}</name>', '\t\t<pose>Unspecified</pose>',
                  f'\t\t<truncated>{int(obj.get("truncated", False))}</truncated>',
                  f'\t\t<difficult>{int(obj.get("difficult", False))}</difficult>',
                  f'\t\t<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>',
                  '\t</object>']
    lines.append('</annotation>')
    Path(path).write_text('\n'.join(lines) + '\n')


def read_image_set(path) -> list[str]:
    """The image ids of an ImageSets/Main/<split>.txt (first token of each non-empty line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'image set not found: {path}')
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_annotations(annotation_paths, threads: int = 8) -> list[Annotation]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(read_annotation, annotation_paths))


# ---------------------------------------------------------------------------------------------------- dataset

class VOCDataset(torch.utils.data.Dataset):
    """The images of ImageSets/Main/<split>.txt of one or more VOC<year> folders (VOC07+12 trainval is
    `VOCDataset([root / 'VOC2007', root / 'VOC2012'], 'trainval')`).

    `classes` defaults to the sorted object names found in the annotations (for real VOC: the 20 classes in the
    usual order); an object of another class is an error naming its file. Missing or undecodable images are named,
    skipped and counted. `dataset[i]` is `(image, target)` passed through `transform(image, target, rng)` with
    `rng` a numpy Generator of (seed, epoch, i): the draws of a sample do not depend on the worker that loads it,
    so a resumed run repeats them. Call `set_epoch(epoch)` before each epoch."""

    def __init__(self, year_dirs, split: str, transform=None, classes=None, verbose: bool = True, seed: int = 0):
        self.transform, self.seed, self.epoch = transform, seed, 0
        self.year_dirs = [Path(d) for d in ([year_dirs] if isinstance(year_dirs, (str, Path)) else year_dirs)]
        entries = []
        for year_dir in self.year_dirs:
            if not year_dir.is_dir():
                raise FileNotFoundError(f'VOC folder not found: {year_dir}')
            ids = read_image_set(year_dir / 'ImageSets' / 'Main' / f'{split}.txt')
            entries += [(year_dir, image_id) for image_id in ids]
        annotations = read_annotations([d / 'Annotations' / f'{i}.xml' for d, i in entries])
        found = sorted({name for a in annotations for name in a.names})
        self.classes = tuple(classes) if classes is not None else tuple(found)
        index = {name: i for i, name in enumerate(self.classes)}
        for (year_dir, image_id), annotation in zip(entries, annotations):
            unknown = [name for name in annotation.names if name not in index]
            if unknown:
                raise AnnotationError(f'{year_dir / "Annotations" / f"{image_id}.xml"}: object class {unknown[0]!r} '
                                      f'is not one of the {len(self.classes)} classes {", ".join(self.classes)}')
        problems = scan_images([d / 'JPEGImages' / f'{i}.jpg' for d, i in entries], image_problem)
        self.samples = [(d / 'JPEGImages' / f'{i}.jpg', a, np.array([index[n] for n in a.names], np.int64))
                        for (d, i), a, p in zip(entries, annotations, problems) if p is None]
        self.skipped = [(str(d / 'JPEGImages' / f'{i}.jpg'), p) for (d, i), p in zip(entries, problems) if p]
        self.split = split
        if not self.samples:
            raise FileNotFoundError(f'no readable images in {", ".join(map(str, self.year_dirs))} {split}')
        if verbose:
            print(self.summary(), flush=True)

    def summary(self) -> str:
        objects = sum(len(a.names) for _, a, _ in self.samples)
        difficult = sum(int(a.difficult.sum()) for _, a, _ in self.samples)
        years = '+'.join(d.name for d in self.year_dirs)
        text = (f'{years} {self.split}: {len(self.samples)} images, {objects} objects ({difficult} difficult), '
                f'{len(self.classes)} classes')
        if self.skipped:
            named = ', '.join(f'{p} ({why})' for p, why in self.skipped[:3])
            more = ', ...' if len(self.skipped) > 3 else ''
            text += f'; skipped {len(self.skipped)} unreadable images: {named}{more}'
        return text

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, annotation, labels = self.samples[index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:  # passed the scan, so it changed on disk since
            raise OSError(f'cannot read image {path} (it was readable when the dataset was scanned)')
        target = {'boxes': annotation.boxes.copy(), 'labels': labels.copy(), 'difficult': annotation.difficult.copy(),
                  'name': annotation.image_id, 'scale': 1.0}
        if self.transform is not None:
            image, target = self.transform(image, target, np.random.default_rng([self.seed, self.epoch, index]))
        return image, target


# ---------------------------------------------------------------------------------------------------- transforms

# crop side as a fraction of the padded (square) image: 1.0 is the whole image as the test sees it, smaller crops
# zoom in up to 2x, so training covers the test scale and larger
VOC_CROP_SCALES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0)


class VOCTrainTransform:
    """`transform(image, target, rng) -> (size x size uint8 image, target)`: photometric distortion, pad to a square
    of the long side (with the mean colour, at the right and bottom, as the test transform does), a random square
    crop of VOC_CROP_SCALES x that side keeping the objects whose centre is inside (boxes clipped), a horizontal
    flip, and a resize to `size` with a random interpolation. Reuses the RetinaFace augmentation's steps."""

    def __init__(self, size: int, crop_scales=VOC_CROP_SCALES, flip: bool = True, distort: bool = True):
        self.size, self.crop_scales, self.flip, self.distort = size, tuple(crop_scales), flip, distort

    def __call__(self, image, target, rng):
        if self.distort:
            image = photometric_distort(image, rng)
        image = pad_to_square(image)
        image, target, _ = random_square_crop(image, target, rng, self.crop_scales)
        if self.flip and rng.random() < 0.5:
            image, target = horizontal_flip(image, target)
        image, target = resize_square(image, target, self.size, rng)
        boxes = target['boxes']
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)  # slivers the crop left
        return image, select_faces(target, keep)


class VOCTestTransform:
    """Pad to a square of the long side (right and bottom) and resize to `size`: the whole image, its aspect kept.
    target['scale'] is input pixels per original pixel, so detections / scale are in the original image, whose
    (height, width) is target['image_size']."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, target, rng=None):
        height, width = image.shape[:2]
        image, scale = letterbox(image, self.size)
        return image, dict(scale_target(target, scale), scale=scale, image_size=(height, width))


def letterbox(image, size: int) -> tuple[np.ndarray, float]:
    """The test input of RetinaNet: the image padded to a square of its long side (right and bottom, the mean
    colour) and resized to size x size; returns it and the scale (input pixels per original pixel)."""
    scale = size / max(image.shape[:2])
    return cv2.resize(pad_to_square(image), (size, size), interpolation=cv2.INTER_LINEAR), scale
