"""insightface's verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin), read without mxnet.

    pairs = read_verification_bin('data/faces_emore/lfw.bin')   # pairs.images: 2N RGB uint8 arrays, pairs.same: (N,)

A .bin is a pickle (written by Python 2 or 3, hence loaded with encoding='bytes') of (bins, issame): bins holds 2N
encoded images (JPEG bytes, as bytes or a uint8 array), images 2i and 2i + 1 form pair i, and issame holds the N
is-same flags. The images are 112 x 112 ArcFace-aligned crops; they are decoded here once (as JPEG or PNG, the only
formats tried) and kept.

Unpickling can run any code a file asks for, so the unpickler here builds only what a .bin holds (lists, tuples,
bytes, bools, numpy arrays and scalars) and refuses every other name a pickle asks for. Every problem (not a pickle,
truncated, a refused name, not (bins, issame), an odd image count, an image that does not decode) is one
VerificationBinError line naming the file.
"""
import builtins
import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

try:  # numpy >= 2 keeps these under numpy._core; pickles written by numpy 1 name numpy.core
    from numpy._core.multiarray import _reconstruct, scalar
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct, scalar


class VerificationBinError(ValueError):
    """A .bin that cannot be used: one line naming the file and what is wrong."""


# what a .bin's pickle may name: (module, name) -> the object it gets
_ALLOWED = {
    **{(module, '_reconstruct'): _reconstruct for module in ('numpy.core.multiarray', 'numpy._core.multiarray')},
    **{(module, 'scalar'): scalar for module in ('numpy.core.multiarray', 'numpy._core.multiarray')},
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    **{(module, name): getattr(builtins, name)
       for module in ('builtins', '__builtin__') for name in ('bytes', 'bytearray', 'list', 'tuple', 'bool')},
    ('_codecs', 'encode'): codecs.encode,  # how Python 3 writes bytes in protocol 2 pickles
}


class _BinUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise VerificationBinError(f'the pickle asks for {module}.{name}, which a verification .bin never needs '
                                       f'(refused: unpickling it could run code)')
        return _ALLOWED[(module, name)]


@dataclass
class VerificationPairs:
    """The decoded images of a .bin (2N RGB uint8 arrays, H x W x 3) and whether each pair i = (2i, 2i + 1) shows
    one person."""
    images: list
    same: np.ndarray   # (N,) bool
    path: str = ''

    def __len__(self):
        return len(self.same)


def _image_bytes(item) -> bytes | None:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    return None


def read_verification_bin(path) -> VerificationPairs:
    """Read and decode a verification .bin (see the module docstring); VerificationBinError on any problem."""
    path = Path(path)
    try:
        with open(path, 'rb') as f:
            content = _BinUnpickler(f, encoding='bytes').load()
    except VerificationBinError as e:
        raise VerificationBinError(f'{path}: {e}') from None
    except OSError as e:
        raise VerificationBinError(f'{path}: cannot be read ({e.strerror or e})') from None
    except EOFError:
        raise VerificationBinError(f'{path}: truncated (the pickle ends early)') from None
    except Exception as e:  # UnpicklingError, ValueError, TypeError ...: what a broken pickle raises
        raise VerificationBinError(f'{path}: not a verification .bin pickle ({type(e).__name__}: '
                                   f'{str(e).splitlines()[0] if str(e) else ""})') from None
    if not (isinstance(content, (tuple, list)) and len(content) == 2):
        raise VerificationBinError(f'{path}: expected a pickle of (images, issame), got {type(content).__name__}')
    bins, issame = content
    try:
        same = np.asarray(issame).astype(bool).ravel()
        bins = list(bins)
    except (TypeError, ValueError):
        raise VerificationBinError(f'{path}: expected (images, issame) lists, got ({type(bins).__name__}, '
                                   f'{type(issame).__name__})') from None
    if len(bins) % 2:
        raise VerificationBinError(f'{path}: {len(bins)} images, an odd count: images 2i and 2i + 1 form pair i')
    if len(bins) != 2 * len(same):
        raise VerificationBinError(f'{path}: {len(bins)} images for {len(same)} is-same flags (expected 2 images '
                                   f'per pair)')
    if not len(same):
        raise VerificationBinError(f'{path}: no pairs')
    images = []
    for index, item in enumerate(bins):
        data = _image_bytes(item)
        if data is None:
            raise VerificationBinError(f'{path}: image {index} is a {type(item).__name__}, not encoded image bytes')
        try:
            with Image.open(io.BytesIO(data), formats=('JPEG', 'PNG')) as image:
                images.append(np.asarray(image.convert('RGB')))
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for broken bytes
            raise VerificationBinError(f'{path}: image {index} (pair {index // 2}) does not decode '
                                       f'({str(e).splitlines()[0] if str(e) else type(e).__name__})') from None
    return VerificationPairs(images, same, str(path))
