"""insightface's training sets (MXNet RecordIO: train.rec + train.idx), read and written without mxnet.

    dataset = RecordDataset('data/faces_webface_112x112', transform=...)
    # prints 'data/faces_webface_112x112/train.rec: K identities, N images (insightface layout: ...)'
    python -m common.data.rec pack --source data/CASIA-WebFace --out data/casia_rec [--size 112] [--quality 95]

The format (dmlc-core's RecordIO, as mxnet writes it; all little-endian):
- train.rec is a sequence of records: uint32 magic 0xced7230a, uint32 lrecord (cflag = lrecord >> 29, length =
  lrecord & (2**29 - 1)), `length` payload bytes, zero padding to a multiple of 4. cflag 0 is a whole payload. A
  payload holding the magic word at a 4-aligned position is split there into parts with cflag 1 (first), 2 (middle)
  and 3 (last), the magic word left out between them (so that the magic word only ever starts a record); reading
  joins the parts with the magic word put back.
- train.idx is text, one `key<TAB>byte offset` line per record.
- A payload is a header '<IfQQ' (flag, label, id, id2: 24 bytes), then `flag` float32 labels when flag > 0, then
  the encoded image (JPEG or PNG).
- insightface's layout: record 0 has flag > 0 and labels (a, b); keys 1 .. a-1 are the images, labelled with their
  identity; keys a .. b-1 are one record per identity whose labels are its [start, end) image keys. A file whose
  record 0 has flag 0 (or that has no key 0) holds images only: every key of the .idx is an image.

Start-up reads the .idx and only the records that say who is in which image: record 0 and the identity records
(insightface's layout), or the 36 leading bytes of each image record (images only); never an image. Identity i of
the identity records is class i (insightface numbers identities in that order); in the images-only layout the
distinct labels, sorted, are the classes. `pack` writes insightface's layout and, as insightface's folders have, a
text file `property` holding `identities,height,width` (older insightface code reads the class count from it; this
reader does not need it).

Corrupt data: a record with a bad magic word, or a length or .idx offset past the end of the file, raises
RecordIOError naming the file and the byte offset (a format mismatch must not train on wrong data). An image whose
bytes do not decode is named in a warning and the next record is used in its place: finding such images before
training would mean reading every image, which start-up must not do.
"""
import argparse
import io
import os
import struct
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image

from .image_folder import seeded_transform
from .images import read_image

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack('<I', MAGIC)
FRAME = struct.Struct('<II')           # magic, lrecord
HEADER = struct.Struct('<IfQQ')        # flag, label, id, id2
LENGTH_MASK = (1 << 29) - 1
MAX_FLOAT32_INTEGER = 1 << 24          # image keys stored as float32 labels are exact up to here
REC_NAME, IDX_NAME = 'train.rec', 'train.idx'
IMAGE_FORMATS = ('JPEG', 'PNG')        # what a payload's image is


class RecordIOError(ValueError):
    """A .rec or .idx that does not follow the format: the message names the file and the byte offset (or line)."""

    def __init__(self, message: str):
        # An error raised in a DataLoader worker comes back as this type holding the worker's whole traceback, whose
        # last line is 'common.data.rec.RecordIOError: <message>': keep the one line.
        if 'Traceback (most recent call last)' in message:
            message = message.strip().splitlines()[-1].split(': ', 1)[-1]
        super().__init__(message)


class RecordHeader(NamedTuple):
    flag: int
    label: float | np.ndarray   # the header's float, or its `flag` float32 labels when flag > 0
    id: int
    id2: int

    @property
    def first_label(self) -> float:
        return float(self.label[0]) if self.flag > 0 else float(self.label)


def parse_payload(payload: bytes, where: str = 'record') -> tuple[RecordHeader, bytes]:
    """(header, image bytes) of a payload; RecordIOError (naming `where`) when it is too short for its header."""
    if len(payload) < HEADER.size:
        raise RecordIOError(f'{where}: payload of {len(payload)} bytes is shorter than the {HEADER.size}-byte header')
    flag, label, key, key2 = HEADER.unpack_from(payload)
    start = HEADER.size
    if flag > 0:
        end = start + 4 * flag
        if len(payload) < end:
            raise RecordIOError(f'{where}: header says {flag} labels, the payload holds {len(payload)} bytes')
        label, start = np.frombuffer(payload, '<f4', flag, start).copy(), end
    return RecordHeader(flag, label, key, key2), payload[start:]


def pack_payload(label, image: bytes = b'', key: int = 0, key2: int = 0) -> bytes:
    """A payload: a number as the header's label (flag 0), or a sequence as `flag` float32 labels after it."""
    if np.ndim(label) == 0:
        return HEADER.pack(0, float(label), key, key2) + image
    labels = np.asarray(label, '<f4').ravel()
    return HEADER.pack(len(labels), 0.0, key, key2) + labels.tobytes() + image


def frame_record(payload: bytes) -> bytes:
    """The bytes of one record: split at every 4-aligned magic word in the payload, each part padded to 4."""
    parts, start, position = [], 0, payload.find(MAGIC_BYTES)
    while position >= 0:
        if position % 4 == 0:
            parts.append(payload[start:position])
            start = position + 4
        position = payload.find(MAGIC_BYTES, position + 1)
    parts.append(payload[start:])
    if len(parts) == 1:
        flags = [0]
    else:
        flags = [1] + [2] * (len(parts) - 2) + [3]
    out = bytearray()
    for cflag, part in zip(flags, parts):
        if len(part) > LENGTH_MASK:
            raise ValueError(f'a record part of {len(part)} bytes is longer than RecordIO allows ({LENGTH_MASK})')
        out += FRAME.pack(MAGIC, (cflag << 29) | len(part)) + part + b'\0' * (-len(part) % 4)
    return bytes(out)


def read_index(path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, byte offsets) of a .idx file, as int64 arrays in file order."""
    path = Path(path)
    tokens = path.read_bytes().split()
    try:
        if len(tokens) % 2:
            raise ValueError('odd number of fields')
        values = np.array(tokens).astype(np.int64).reshape(-1, 2) if tokens else np.zeros((0, 2), np.int64)
    except ValueError:
        for number, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
            fields = line.split()
            if line.strip() and (len(fields) != 2 or not all(f.isdigit() for f in fields)):
                raise RecordIOError(f'{path}:{number}: expected "key<TAB>byte offset", got {line.strip()[:60]!r}'
                                    ) from None
        raise RecordIOError(f'{path}: not a .idx file ("key<TAB>byte offset" lines)') from None
    keys, offsets = values[:, 0], values[:, 1]
    if len(np.unique(keys)) != len(keys):
        raise RecordIOError(f'{path}: a key is listed twice')
    return keys, offsets


class RecordFile:
    """A .rec with its .idx: payloads by key or byte offset. The file is opened on the first read in each process (a
    DataLoader worker opens its own) and is never pickled."""

    def __init__(self, rec_path, idx_path=None):
        self.path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.path.with_suffix('.idx')
        for path, kind in ((self.path, 'RecordIO file'), (self.idx_path, 'RecordIO index')):
            if not path.is_file():
                raise FileNotFoundError(f'{kind} not found: {path}')
        self.size = self.path.stat().st_size
        self.keys, self.offsets = read_index(self.idx_path)
        past = np.flatnonzero(self.offsets + FRAME.size > self.size)
        if len(past):
            key, offset = self.keys[past[0]], self.offsets[past[0]]
            raise RecordIOError(f'{self.idx_path}: key {key}: byte offset {offset} is past the end of {self.path} '
                                f'({self.size} bytes)')
        self._sorted = np.argsort(self.keys, kind='stable')
        self._file, self._pid = None, None

    def __len__(self):
        return len(self.keys)

    def __getstate__(self):
        return {**self.__dict__, '_file': None, '_pid': None}

    def close(self):
        if self._file is not None:
            self._file.close()
        self._file, self._pid = None, None

    def _read(self, offset: int, size: int) -> bytes:
        if self._file is None or self._pid != os.getpid():  # first read in this process (or a forked copy)
            self._file, self._pid = open(self.path, 'rb', buffering=0), os.getpid()
        self._file.seek(offset)
        return self._file.read(size)

    def offsets_of(self, keys) -> np.ndarray:
        """Byte offsets of `keys` (RecordIOError naming the first key the .idx lacks)."""
        keys = np.asarray(keys, np.int64)
        where = np.searchsorted(self.keys, keys, sorter=self._sorted)
        where = self._sorted[np.minimum(where, len(self.keys) - 1)] if len(self.keys) else where
        missing = np.flatnonzero(self.keys[where] != keys) if len(self.keys) else np.arange(len(keys))
        if len(missing):
            raise RecordIOError(f'{self.idx_path}: no record with key {keys[missing[0]]} (insightface\'s layout '
                                f'names it; {len(missing)} such keys)')
        return self.offsets[where]

    def _frame(self, offset: int, head: bytes) -> tuple[int, int]:
        """(cflag, length) of the record at `offset`, whose first bytes are `head`."""
        if len(head) < FRAME.size:
            raise RecordIOError(f'{self.path}: byte {offset}: truncated record header ({len(head)} of '
                                f'{FRAME.size} bytes before the end of the file)')
        magic, lrecord = FRAME.unpack_from(head)
        if magic != MAGIC:
            raise RecordIOError(f'{self.path}: byte {offset}: bad magic 0x{magic:08x} (expected 0x{MAGIC:08x}): '
                                f'not a record start (corrupt file, or a .idx that does not belong to it)')
        length = lrecord & LENGTH_MASK
        if offset + FRAME.size + length > self.size:
            raise RecordIOError(f'{self.path}: byte {offset}: record length {length} runs past the end of the file '
                                f'({self.size} bytes; truncated?)')
        return lrecord >> 29, length

    def read_at(self, offset: int) -> bytes:
        """The payload of the record at `offset`, its parts joined when it was split."""
        offset, parts = int(offset), []
        while True:
            head = self._read(offset, FRAME.size)
            cflag, length = self._frame(offset, head)
            if cflag not in ((0, 1) if not parts else (2, 3)):
                expected = 'a whole record or a first part' if not parts else 'the next part of a split record'
                raise RecordIOError(f'{self.path}: byte {offset}: record part flag {cflag} where {expected} '
                                    f'belongs')
            parts.append(self._read(offset + FRAME.size, length))
            offset += FRAME.size + length + (-length % 4)
            if cflag in (0, 3):
                return MAGIC_BYTES.join(parts)

    def read(self, key: int) -> bytes:
        return self.read_at(self.offsets_of([key])[0])

    def header_at(self, offset: int) -> RecordHeader:
        """The header (and first label) of the record at `offset`, from its leading bytes alone."""
        offset = int(offset)
        head = self._read(offset, FRAME.size + HEADER.size + 4)
        cflag, length = self._frame(offset, head)
        body = head[FRAME.size:FRAME.size + length]
        if cflag == 1 and length < HEADER.size + 4:  # the split falls inside the header: join the whole record
            body = self.read_at(offset)[:HEADER.size + 4]
        elif cflag not in (0, 1):
            raise RecordIOError(f'{self.path}: byte {offset}: record part flag {cflag} where a record starts')
        if len(body) < HEADER.size:
            raise RecordIOError(f'{self.path}: byte {offset}: payload of {len(body)} bytes is shorter than the '
                                f'{HEADER.size}-byte header')
        flag, label, key, key2 = HEADER.unpack_from(body)
        if flag > 0:
            if len(body) < HEADER.size + 4:
                raise RecordIOError(f'{self.path}: byte {offset}: header says {flag} labels, the payload has none')
            label = np.frombuffer(body, '<f4', 1, HEADER.size).copy()
        return RecordHeader(flag, label, key, key2)


class Layout(NamedTuple):
    offsets: np.ndarray    # (N,) byte offset of each image record
    keys: np.ndarray       # (N,) its key
    targets: np.ndarray    # (N,) class index 0 .. K-1
    classes: list          # K identity names
    description: str


def _label_name(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def read_layout(file: RecordFile) -> Layout:
    """Which records are images and whose, from record 0 and the identity records (insightface's layout) or from the
    image headers (images only)."""
    if (file.keys == 0).any():
        zero = file.offsets_of([0])[0]
        header, _ = parse_payload(file.read_at(zero), f'{file.path}: byte {zero} (record 0)')
        if header.flag > 0:
            return _insightface_layout(file, header, zero)
    return _labelled_images(file, file.keys, file.offsets_of(file.keys), 'images only, labels from their headers')


def _insightface_layout(file: RecordFile, header: RecordHeader, zero: int) -> Layout:
    if header.flag < 2:
        raise RecordIOError(f'{file.path}: byte {zero}: record 0 has {header.flag} label; insightface\'s layout '
                            f'has two (first identity record, end of identity records)')
    a, b = int(header.label[0]), int(header.label[1])
    if not 1 <= a <= b:
        raise RecordIOError(f'{file.path}: byte {zero}: record 0 labels ({a}, {b}) are not image keys 1 .. a-1 '
                            f'followed by identity keys a .. b-1')
    if a == b:  # no identity records: the images' own labels
        keys = np.arange(1, a)
        return _labelled_images(file, keys, file.offsets_of(keys), 'insightface layout without identity records')
    identity_offsets = file.offsets_of(np.arange(a, b))
    ranges = np.empty((b - a, 2), np.int64)
    for i, offset in enumerate(identity_offsets):
        identity, _ = parse_payload(file.read_at(offset), f'{file.path}: byte {offset} (identity record {a + i})')
        if identity.flag < 2:
            raise RecordIOError(f'{file.path}: byte {offset}: identity record {a + i} has no [start, end) labels')
        ranges[i] = identity.label[:2]
    bad = np.flatnonzero((ranges[:, 0] < 1) | (ranges[:, 1] > a) | (ranges[:, 0] > ranges[:, 1]))
    if len(bad):
        i = bad[0]
        raise RecordIOError(f'{file.path}: byte {identity_offsets[i]}: identity record {a + i} names images '
                            f'[{ranges[i, 0]}, {ranges[i, 1]}), outside the image keys 1 .. {a - 1}')
    used = np.flatnonzero(ranges[:, 1] > ranges[:, 0])  # identities without images are no class
    order = used[np.argsort(ranges[used, 0], kind='stable')]
    overlap = np.flatnonzero(ranges[order[1:], 0] < ranges[order[:-1], 1])
    if len(overlap):
        i = order[overlap[0] + 1]
        raise RecordIOError(f'{file.path}: byte {identity_offsets[i]}: identity record {a + i} shares images with '
                            f'another identity')
    counts = ranges[used, 1] - ranges[used, 0]
    keys = np.concatenate([np.arange(start, end) for start, end in ranges[used]])
    targets = np.repeat(np.arange(len(used)), counts)
    note = f'insightface layout: record 0, {b - a} identity records'
    if a > MAX_FLOAT32_INTEGER:
        note += f'; image keys above {MAX_FLOAT32_INTEGER} are not exact in its float32 labels'
    if a - 1 > len(keys):
        note += f'; {a - 1 - len(keys)} image keys outside every identity left out'
    return Layout(file.offsets_of(keys), keys, targets, [str(i) for i in used], note)


def _labelled_images(file: RecordFile, keys, offsets, note: str) -> Layout:
    if len(keys) == 0:
        raise RecordIOError(f'{file.path}: no image records')
    labels = np.array([file.header_at(offset).first_label for offset in offsets])
    distinct, targets = np.unique(labels, return_inverse=True)
    return Layout(np.asarray(offsets), np.asarray(keys), targets, [_label_name(v) for v in distinct], note)


def rec_paths(root) -> tuple[Path, Path]:
    """(train.rec, train.idx) of a folder, or a .rec file and the .idx beside it."""
    root = Path(root)
    if root.suffix == '.rec' and root.is_file():
        return root, root.with_suffix('.idx')
    return root / REC_NAME, root / IDX_NAME


def is_rec_folder(path) -> bool:
    """True for a folder holding train.rec or train.idx (insightface's training sets), or a path to a .rec file;
    False for anything else (an ImageFolder)."""
    path = Path(path)
    if path.is_file():
        return path.suffix == '.rec'
    return (path / REC_NAME).is_file() or (path / IDX_NAME).is_file()


class _Samples(Sequence):
    """(key, class index) of each image, viewed over two arrays: millions of tuples would cost ~90 bytes each in
    every DataLoader worker."""

    def __init__(self, keys, targets):
        self.keys, self.targets = keys, targets

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, index):
        return int(self.keys[index]), int(self.targets[index])


def decode_image(data: bytes) -> Image.Image:
    """RGB PIL image of encoded bytes, as torchvision's ImageFolder opens its files (same pixels). Only the formats
    insightface stores are tried: on bytes that are neither, PIL would otherwise import all its plugins."""
    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
        return image.convert('RGB')


class RecordDataset(torch.utils.data.Dataset):
    """An insightface .rec training set used as SeededImageFolder is: `classes` (identity names), `samples` ((key,
    class index) per image), `targets`, `dataset[i] -> (transformed RGB PIL image, class index)`, and random
    transforms that are a function of (seed, epoch, index) alone (call `set_epoch(epoch)` before each epoch).
    `root`: a folder with train.rec and train.idx, or a .rec file with its .idx beside it."""

    def __init__(self, root, transform=None, verbose: bool = True, seed: int = 0):
        self.root = Path(root)
        rec_path, idx_path = rec_paths(root)
        if not self.root.exists():
            raise FileNotFoundError(f'RecordIO folder not found: {self.root}')
        self.file = RecordFile(rec_path, idx_path)
        layout = read_layout(self.file)
        self.file.close()  # forked DataLoader workers open their own
        self.offsets, self.keys, self.targets = layout.offsets, layout.keys, layout.targets
        self.classes, self.layout = layout.classes, layout.description
        self.samples = _Samples(self.keys, self.targets)
        self.transform, self.seed, self.epoch = transform, seed, 0
        self._undecodable = torch.zeros((), dtype=torch.int64).share_memory_()  # counted across workers
        if verbose:
            print(self.summary(), flush=True)

    def summary(self) -> str:
        return f'{self.file.path}: {len(self.classes)} identities, {len(self)} images ({self.layout})'

    def __len__(self):
        return len(self.offsets)

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    @property
    def undecodable(self) -> int:
        """Images found undecodable so far (in any worker)."""
        return int(self._undecodable)

    def load(self, index: int) -> tuple[Image.Image, int]:
        """(RGB image, class index) of sample `index`; an undecodable image is reported and the next sample that
        decodes is used in its place."""
        for step in range(len(self)):
            i = (index + step) % len(self)
            offset = int(self.offsets[i])
            _, data = parse_payload(self.file.read_at(offset), f'{self.file.path}: byte {offset}')
            try:
                return decode_image(data), int(self.targets[i])
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for broken bytes
                self._undecodable += 1
                why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                print(f'warning: {self.file.path}: record {self.keys[i]} at byte {offset} does not decode as an '
                      f'image ({why}); the next record is used in its place ({self.undecodable} undecodable so far)',
                      file=sys.stderr, flush=True)
        raise RecordIOError(f'{self.file.path}: no record decodes as an image')

    def __getitem__(self, index: int):
        image, label = self.load(index)
        return seeded_transform(self.transform, image, self.seed, self.epoch, index), label


# ------------------------------------------------------------------------------------------------ writing


class RecordWriter:
    """Writes a .rec and its .idx, record by record (`write(key, payload)`); `rewrite(key, payload)` replaces a
    record already written by one of the same framed size (record 0, once the counts are known)."""

    def __init__(self, rec_path, idx_path):
        self.rec, self.idx = open(rec_path, 'wb'), open(idx_path, 'w')
        self.where = {}

    def write(self, key: int, payload: bytes):
        record = frame_record(payload)
        self.where[key] = (self.rec.tell(), len(record))
        self.rec.write(record)
        self.idx.write(f'{key}\t{self.where[key][0]}\n')

    def rewrite(self, key: int, payload: bytes):
        offset, size = self.where[key]
        record = frame_record(payload)
        if len(record) != size:
            raise ValueError(f'record {key}: a rewrite must keep its size ({size} bytes, got {len(record)})')
        end = self.rec.tell()
        self.rec.seek(offset)
        self.rec.write(record)
        self.rec.seek(end)

    def close(self):
        self.rec.close()
        self.idx.close()


def write_insightface_rec(out, images, size: tuple[int, int] = (112, 112)) -> tuple[int, int]:
    """Write OUT/train.rec, OUT/train.idx and OUT/property in insightface's layout from `images`, an iterable of
    (class index, encoded image bytes) grouped by class in increasing order (class indices need not be contiguous:
    the written identities are numbered 0 .. K-1 in that order). Files are written under temporary names and renamed
    at the end. Returns (identities, images)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rec_tmp, idx_tmp = out / f'.{REC_NAME}.tmp', out / f'.{IDX_NAME}.tmp'
    writer = RecordWriter(rec_tmp, idx_tmp)
    try:
        writer.write(0, pack_payload([0, 0]))  # placeholder: the counts are known at the end
        starts, key, previous = [], 1, None
        for label, data in images:
            if label != previous:
                if previous is not None and label < previous:
                    raise ValueError(f'images must come grouped by class in increasing order ({label} after '
                                     f'{previous})')
                starts.append(key)
                previous = label
            writer.write(key, pack_payload(float(len(starts) - 1), data, key))
            key += 1
        a = key
        if a - 1 > MAX_FLOAT32_INTEGER:
            raise ValueError(f'{a - 1} images: insightface\'s layout stores image keys as float32 labels, exact only '
                             f'up to {MAX_FLOAT32_INTEGER}')
        for identity, (start, end) in enumerate(zip(starts, starts[1:] + [a])):
            writer.write(a + identity, pack_payload([start, end], b'', a + identity))
        writer.rewrite(0, pack_payload([a, a + len(starts)]))
    finally:
        writer.close()
    height, width = size
    (out / 'property').write_text(f'{len(starts)},{height},{width}\n')
    os.replace(rec_tmp, out / REC_NAME)
    os.replace(idx_tmp, out / IDX_NAME)
    return len(starts), a - 1


def _encoded_face(path: str, size: int, encoding: str, quality: int) -> tuple[bytes | None, str]:
    """(bytes to store, how) for one source image: its own bytes when it already is a size x size image in the
    wanted encoding, else decoded, resized (squashed, as the training transforms resize) and encoded; (None, why)
    when it does not decode."""
    image = read_image(path)
    if image is None:
        return None, 'does not decode'
    if image.shape[:2] == (size, size):
        with open(path, 'rb') as f:
            head = f.read(4)
        if head[:3] == b'\xff\xd8\xff' and encoding == 'jpg' or head == b'\x89PNG' and encoding == 'png':
            return Path(path).read_bytes(), 'copied'
    interpolation = cv2.INTER_AREA if max(image.shape[:2]) > size else cv2.INTER_LINEAR
    image = cv2.resize(image, (size, size), interpolation=interpolation)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if encoding == 'jpg' else []
    return cv2.imencode(f'.{encoding}', image, params)[1].tobytes(), 'encoded'


def pack_image_folder(source, out, size: int = 112, encoding: str = 'jpg', quality: int = 95, threads: int = 8,
                      progress: bool = True) -> dict:
    """An ImageFolder (SOURCE/<identity>/<image>) -> OUT/train.rec, train.idx, property in insightface's layout.
    Identities and images come in torchvision ImageFolder's order, so class i of the .rec is class i of the folder
    (when every folder has a readable image). Unreadable images are skipped and listed."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    from tqdm import tqdm
    source = Path(source)
    try:
        _, class_to_idx = find_classes(str(source))
    except FileNotFoundError:
        raise FileNotFoundError(f'{source}: no class folders (expected {source}/<identity>/<image>.jpg)') from None
    samples = make_dataset(str(source), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise FileNotFoundError(f'{source}: no images in its class folders')
    counts, skipped = {'copied': 0, 'encoded': 0}, []
    bar = tqdm(total=len(samples), desc=f'pack {source.name}', unit='img', disable=not progress, leave=False,
               dynamic_ncols=True, file=sys.stdout)

    def encoded(pool):
        chunk = 4 * threads  # bounded look-ahead: results are written in order as they come
        for start in range(0, len(samples), chunk):
            batch = samples[start:start + chunk]
            for (path, label), (data, how) in zip(batch, pool.map(
                    lambda s: _encoded_face(s[0], size, encoding, quality), batch)):
                bar.update()
                if data is None:
                    skipped.append(f'{Path(path).relative_to(source)} ({how})')
                    continue
                counts[how] += 1
                yield label, data

    with ThreadPoolExecutor(max_workers=threads) as pool:  # OpenCV releases the GIL while decoding and encoding
        identities, images = write_insightface_rec(out, encoded(pool), (size, size))
    bar.close()
    return {'identities': identities, 'images': images, 'folders': len(class_to_idx), 'skipped': skipped, **counts}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python -m common.data.rec', description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    pack = commands.add_parser('pack', help='an ImageFolder of aligned faces -> train.rec, train.idx, property')
    pack.add_argument('--source', required=True, help='ImageFolder: SOURCE/<identity>/<image>')
    pack.add_argument('--out', required=True, help='folder to write train.rec, train.idx and property into')
    pack.add_argument('--size', type=int, default=112, help='images are stored SIZE x SIZE (resized when not)')
    pack.add_argument('--encoding', default='jpg', choices=['jpg', 'png'], help='how resized images are stored '
                      '(images already SIZE x SIZE in this encoding are stored byte for byte)')
    pack.add_argument('--quality', type=int, default=95, help='JPEG quality of re-encoded images')
    pack.add_argument('--threads', type=int, default=8)
    args = parser.parse_args(argv)
    from ..runtime import fail
    if not Path(args.source).is_dir():
        fail(f'--source: image folder not found: {args.source}')
    if args.size < 1 or not 1 <= args.quality <= 100:
        fail(f'--size {args.size} / --quality {args.quality}: a size of at least 1 and a quality in 1 .. 100')
    try:
        result = pack_image_folder(args.source, args.out, args.size, args.encoding, args.quality, args.threads)
    except FileNotFoundError as e:
        fail(f'--source: {e}')
    except (OSError, ValueError) as e:
        fail(f'--out {args.out}: {e}')
    line = (f'{Path(args.out) / REC_NAME}: {result["identities"]} identities, {result["images"]} images '
            f'({result["copied"]} stored as they were, {result["encoded"]} encoded as {args.size}x{args.size} '
            f'{args.encoding})')
    if result['skipped']:
        names = ', '.join(result['skipped'][:3]) + (', ...' if len(result['skipped']) > 3 else '')
        line += f'; skipped {len(result["skipped"])} unreadable: {names}'
    if result['identities'] < result['folders']:
        line += f'; {result["folders"] - result["identities"]} identity folders had no readable image'
    print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
