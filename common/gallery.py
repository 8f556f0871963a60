"""Who is in a photo: a gallery of known people (one folder per person, a few photos each) and the nearest-person
rule that names a face.

    recognizer = load_recognizer('mobilefacenet.pt')                       # common/inference/recognizer.py
    gallery = Gallery.build('people/', detector, recognizer, cache_dir='runs/detect',
                            model_files=['mobilefacenet.pt', 'retinaface.pth'])
    names, scores = gallery.identify(recognizer(crops), threshold=MATCH_THRESHOLD)

Each gallery photo is detected with the same detector that finds the faces to name, its highest-scoring face aligned
for the recognizer and embedded. A photo that cannot be read or holds no face is named and skipped; a person left
without a usable photo is an error. The embeddings are cached in `cache_dir` (a gallery may be read-only), in a file
per model (a hash of the model files and the settings that change the vectors), each entry valid while its photo
keeps its path, size and modification time.

A face is the person whose nearest gallery photo (cosine similarity of the unit embeddings) is nearest, when that
similarity reaches the threshold; otherwise it is "unknown".
"""
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .align import crop_face, pick_face
from .checkpoint import file_sha256
from .data.images import image_files, read_image

UNKNOWN = 'unknown'
# cosine similarity a face must reach to be named: between the different-person and same-person scores the released
# MobileFaceNet gives on the shared people's photos (docs/recognition.md, "Real faces")
MATCH_THRESHOLD = 0.4
EMBED_BATCH = 32


class GalleryError(ValueError):
    """A gallery that cannot name anyone: missing, empty, or a person without one usable photo."""


def model_key(model_files, **settings) -> str:
    """A hash of the files' contents and the settings (JSON-able values): the cache's key."""
    parts = [file_sha256(p) for p in model_files] + [json.dumps(settings, sort_keys=True)]
    return hashlib.sha256('\n'.join(parts).encode()).hexdigest()


class Gallery:
    """people: the person names (folder names, sorted); vectors (M, D) unit embeddings of the usable photos;
    owner (M,) the index in `people` of each photo's person; photos: the M photo paths."""

    def __init__(self, people: list, vectors: np.ndarray, owner: np.ndarray, photos: list):
        self.people, self.vectors, self.owner, self.photos = people, vectors, owner, photos

    def __len__(self):
        return len(self.people)

    def identify(self, vectors: np.ndarray, threshold: float = MATCH_THRESHOLD) -> tuple[list, np.ndarray]:
        """(names, scores) of each (D,) unit vector: the person with the most similar gallery photo and that
        similarity; the name is UNKNOWN when the similarity is below `threshold` (the score is kept)."""
        if len(vectors) == 0:
            return [], np.zeros(0, np.float32)
        similarity = np.asarray(vectors, np.float32) @ self.vectors.T                    # (N, M)
        per_person = np.stack([similarity[:, self.owner == p].max(1) for p in range(len(self.people))], 1)
        best = per_person.argmax(1)
        scores = per_person[np.arange(len(best)), best]
        names = [self.people[b] if s >= threshold else UNKNOWN for b, s in zip(best, scores)]
        return names, scores

    @classmethod
    def build(cls, root, detector, recognizer, *, cache_dir=None, model_files=(), log=print) -> 'Gallery':
        """Embed the photos under root/<person>/ (the cached ones from the cache). `detector(list of BGR images)`
        gives boxes, scores and landmarks (a FaceDetector); `recognizer` is a Recognizer. `log(line)` reports the
        photos skipped. Raises GalleryError for an unusable gallery."""
        root = Path(root)
        if not root.is_dir():
            raise GalleryError(f'{root}: gallery folder not found')
        people = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not people:
            raise GalleryError(f'{root}: no person folders in it (expected {root}/<person>/<photo>.jpg)')
        key = model_key(model_files, template=recognizer.template, size=recognizer.size, flip=recognizer.flip,
                        conf_thres=getattr(detector, 'conf_thres', None), max_size=getattr(detector, 'max_size', None))
        cache_file = Path(cache_dir) / f'gallery_{key[:16]}.json' if cache_dir else None
        cached = _read_cache(cache_file, key)
        entries, crops = {}, {}  # photo id -> cache entry; photo id -> aligned crop still to embed
        for person in people:
            for photo in image_files(root / person):
                photo_id, stat = str(photo.resolve()), photo.stat()
                entry = {'person': person, 'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns, 'embedding': None}
                hit = cached.get(photo_id)
                if hit and all(hit.get(k) == entry[k] for k in ('person', 'size', 'mtime_ns')):
                    entry = hit
                else:
                    image = read_image(photo)
                    if image is None:
                        log(f'gallery: skipping {photo}: cannot be decoded as an image')
                        continue
                    result = detector([image])[0]
                    index = pick_face(result['boxes'], result['scores'], image.shape[:2], 'score')
                    if index is not None:
                        crops[photo_id] = crop_face(image, result['landmarks'][index], recognizer.template,
                                                    recognizer.size)
                if entry['embedding'] is None and photo_id not in crops:
                    log(f'gallery: skipping {photo}: no face found')
                entries[photo_id] = entry
        ids = list(crops)
        for start in range(0, len(ids), EMBED_BATCH):
            vectors = recognizer([crops[i] for i in ids[start:start + EMBED_BATCH]])
            for photo_id, vector in zip(ids[start:start + EMBED_BATCH], vectors):
                entries[photo_id]['embedding'] = [float(v) for v in vector]
        usable = [(photo_id, e) for photo_id, e in entries.items() if e['embedding'] is not None]
        without = [p for p in people if not any(e['person'] == p for _, e in usable)]
        if without:
            raise GalleryError(f'{root}: no usable photo (readable, with a face) of {", ".join(without)}')
        if cache_file is not None and (crops or set(entries) != set(cached)):
            _write_cache(cache_file, key, entries)
        vectors = np.array([e['embedding'] for _, e in usable], np.float32)
        owner = np.array([people.index(e['person']) for _, e in usable])
        gallery = cls(people, vectors, owner, [photo_id for photo_id, _ in usable])
        gallery.from_cache = len(usable) - len(crops)
        return gallery


def _read_cache(path, key: str) -> dict:
    """photo id -> entry of a cache file written for `key`; {} when there is none, it is for another model, or it
    cannot be read (it is then rebuilt)."""
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get('photos', {}) if isinstance(data, dict) and data.get('key') == key else {}


def _write_cache(path: Path, key: str, entries: dict):
    """Written whole to a temporary file, then renamed: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    with os.fdopen(fd, 'w') as f:
        json.dump({'key': key, 'photos': entries}, f)
    os.replace(tmp, path)
