"""Image files: which files are images, reading one, checking many before a run, and reading ahead in a thread.

The datasets and commands that read photos (detection sets, ImageFolders, detect.py, alignment) check their images
here before they start, so a missing or corrupt file costs one line at start instead of a crash hours into a run.
Two checks, one per decoder: OpenCV's (the detection sets read with it) and PIL's (torchvision's ImageFolder reads
with it; PIL also refuses a truncated JPEG that OpenCV would decode with a grey tail).
"""
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff')


def is_image_file(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_files(folder) -> list[Path]:
    """Every image file under `folder`, searched recursively, sorted (by their suffix: nothing is read)."""
    return sorted(p for p in Path(folder).rglob('*') if p.is_file() and is_image_file(p))


def read_image(path):
    """BGR uint8 image, or None when the file cannot be read or decoded (np.fromfile also works for non-ASCII
    paths, which cv2.imread does not on Windows)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


def image_problem(path) -> str | None:
    """'missing', 'corrupt' or None, as OpenCV sees the file; decodes at 1/8 size, which still fails on a broken
    file but costs little."""
    path = Path(path)
    if not path.is_file():
        return 'missing'
    image = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    return 'corrupt' if image is None or image.size == 0 else None


def pil_image_problem(path) -> str | None:
    """None when PIL decodes the file, else why not. JPEGs decode at 1/8 scale (PIL's draft mode): fast, and a
    truncated file still fails, as it would when training reads it."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            image.draft('RGB', (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
        return None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... for broken files
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def scan_images(paths, check=image_problem, threads: int = 8) -> list:
    """check(path) for every path, in threads (the decoders release the GIL)."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(check, paths))


def prefetch(items, depth: int):
    """Run the `items` generator in a background thread, `depth` items ahead (OpenCV releases the GIL while it
    decodes, so reading overlaps the forward pass). Errors in the thread are raised here."""
    buffer = queue.Queue(maxsize=max(depth, 1))
    done = object()

    def worker():
        try:
            for item in items:
                buffer.put(item)
        except BaseException as error:  # handed to the consumer, which raises it with its traceback
            buffer.put(error)
        buffer.put(done)

    threading.Thread(target=worker, daemon=True).start()
    while (item := buffer.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
