"""Aligned face crops made into a recognition network's input: the train and test transforms of each input convention
(common/models/recognition.py INPUTS), and how insightface's 112 x 112 ArcFace crops (its .rec training sets and
.bin verification sets) feed a network whose input has another shape.

- gray128, the recognition tutorial's: Grayscale, RandomHorizontalFlip, Resize 144, RandomCrop 128, Normalize; test:
  Grayscale, Resize 128, Normalize. Other conventions: RandomHorizontalFlip, Resize to the input's height x width,
  Normalize; test: the same without the flip. Normalize maps pixel p to (p - mean) / std as the convention says.
- `arcface_crops=True` (the images are ArcFace crops): a network taking 96 wide x 112 high faces (the SphereFace
  template, as the released MobileFaceNet) first gets columns 8 .. 103 of a 112 x 112 crop. That template is the
  ArcFace one moved 8 px left at the same scale (../REFERENCE.md), so the cut is exactly a SphereFace crop, where a
  resize would squash the face; a square crop of another size is cut in the same proportion. Square networks take
  the crop as it is (resized by the transform).
"""
import torchvision.transforms as T

from ..models.recognition import INPUTS

SPHEREFACE_WIDTH, ARCFACE_SIDE = 96, 112   # the two templates' widths at the same scale, 112 px high


class FitArcfaceCrop:
    """PIL transform: a square ArcFace crop -> its central side * 96 / 112 columns, when the network takes
    SphereFace-shaped (96:112) faces; anything else passes unchanged."""

    def __init__(self, height: int, width: int):
        self.active = width * ARCFACE_SIDE == height * SPHEREFACE_WIDTH

    def __call__(self, image):
        side = image.height
        if not self.active or image.width != side:
            return image
        keep = round(side * SPHEREFACE_WIDTH / ARCFACE_SIDE)
        start = (side - keep) // 2
        return image.crop((start, 0, start + keep, side))

    def __repr__(self):
        return f'{type(self).__name__}(active={self.active})'


def face_transforms(input_name, arcface_crops: bool = False):
    """(train, test) transforms of RGB PIL images for an input convention (see the module docstring)."""
    face = INPUTS[input_name]
    normalize = T.Normalize([face.mean / 255] * face.channels, [face.std / 255] * face.channels)  # (p - mean) / std
    if input_name == 'gray128':
        train = T.Compose([T.Grayscale(), T.RandomHorizontalFlip(), T.Resize((144, 144)), T.RandomCrop(128),
                           T.ToTensor(), normalize])
        test = T.Compose([T.Grayscale(), T.Resize((128, 128)), T.ToTensor(), normalize])
        return train, test
    size = (face.height, face.width)
    fit = [FitArcfaceCrop(*size)] if arcface_crops and FitArcfaceCrop(*size).active else []
    train = T.Compose([*fit, T.RandomHorizontalFlip(), T.Resize(size), T.ToTensor(), normalize])
    test = T.Compose([*fit, T.Resize(size), T.ToTensor(), normalize])
    return train, test
