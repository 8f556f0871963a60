"""Tiny synthetic datasets written in the real on-disk formats, so every pipeline runs and tests without downloads.

    python -m common.synthetic widerface --out data/synthetic_widerface --num-images 600 --seed 0
    python -m common.synthetic contact-sheet --data data/synthetic_widerface --out docs/synthetic_widerface.png
    python -m common.synthetic identities --out data/identities --seed 0            (people: identities.py)
    python -m common.synthetic voc --out data/synthetic_voc --num-images 300 --seed 0   (objects: objects.py)
    python -m common.synthetic imagefolder --out data/synthetic_objects --seed 0        (one object per image)

Each kind is one function `make_<kind>(out, ..., seed)` listed in KINDS; the same seed writes the same bytes. The
faces are drawn by faces.py, the people of the identities set by identities.py, the objects by objects.py.
"""
from .identities import make_identities
from .objects import make_imagefolder, make_voc
from .widerface import make_widerface, write_widerface_ground_truth

# kind name -> its writer (the command line's sub-commands)
KINDS = {
    'widerface': make_widerface,      # face detection, MindFace layout + the official evaluation's .mat files
    'identities': make_identities,    # face recognition: train/ and test/ ImageFolders of different people, pairs
    'voc': make_voc,                  # objects, Pascal VOC layout
    'imagefolder': make_imagefolder,  # one object per image, for pretrain_extractor.py
}

__all__ = ['KINDS', 'make_identities', 'make_imagefolder', 'make_voc', 'make_widerface', 'write_widerface_ground_truth']
