"""insightface .rec/.idx training sets (common/data/rec.py): files built here byte by byte from the format's description
(split records, header label arrays, record 0 and images-only layouts), corrupt files each stopped with one line
naming the file and the byte offset, undecodable images skipped, the writer's round trip against the ImageFolder it
packs, and DataLoader workers with their own file handles."""
import pickle
import struct

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms as T
from torch._utils import ExceptionWrapper

from common.data.rec import MAGIC, RecordDataset, RecordFile, RecordIOError, frame_record, is_rec_folder, main, \
    pack_payload
from common.data.image_folder import ImageFolderDataset

MAGIC_WORD = struct.pack('<I', 0xCED7230A)


# ------------------------------------------------------------------------ a writer of our own, from the description


def framed(cflag: int, data: bytes) -> bytes:
    """One record (or part): magic, lrecord = cflag << 29 | length, the bytes, zero padding to a multiple of 4."""
    return struct.pack('<II', 0xCED7230A, (cflag << 29) | len(data)) + data + b'\0' * (-len(data) % 4)


def payload(flag: int, label: float, key: int, labels=(), image: bytes = b'') -> bytes:
    return struct.pack('<IfQQ', flag, label, key, 0) + struct.pack(f'<{len(labels)}f', *labels) + image


def png(seed: int, size=(12, 10)) -> tuple[np.ndarray, bytes]:
    """(RGB pixels, PNG bytes) of a small random image."""
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return rgb, cv2.imencode('.png', rgb[:, :, ::-1])[1].tobytes()


def write_files(folder, records: list[tuple[int, bytes]]):
    """train.rec from (key, whole file bytes of the record) in order, and the train.idx listing their offsets."""
    folder.mkdir(parents=True, exist_ok=True)
    rec, lines = b'', []
    for key, data in records:
        lines.append(f'{key}\t{len(rec)}\n')
        rec += data
    (folder / 'train.rec').write_bytes(rec)
    (folder / 'train.idx').write_text(''.join(lines))
    return folder


def insightface_folder(tmp_path):
    """Record 0 = (a, b), five images of two identities (2 + 3) at keys 1..5, identity records 6 and 7. Image 2 is
    split in three parts (its id and id2 fields are the magic word, at 4-aligned payload offsets 8 and 16); image 4
    carries a label array (identity, 7.0) after its header."""
    pixels = [png(i) for i in range(5)]
    identity = [0, 0, 1, 1, 1]
    records = [(0, framed(0, payload(2, 0.0, 0, (6, 8))))]
    for key, ((_, image), who) in enumerate(zip(pixels, identity), 1):
        if key == 2:
            whole = struct.pack('<IfII', 0, who, MAGIC, 0) + struct.pack('<II', MAGIC, 0) + image
            parts = framed(1, whole[:8]) + framed(2, whole[12:16]) + framed(3, whole[20:])
            records.append((key, parts))
        elif key == 4:
            records.append((key, framed(0, payload(2, 0.0, key, (who, 7.0), image))))
        else:
            records.append((key, framed(0, payload(0, who, key, (), image))))
    records += [(6, framed(0, payload(2, 0.0, 6, (1, 3)))), (7, framed(0, payload(2, 0.0, 7, (3, 6))))]
    return write_files(tmp_path / 'insightface', records), [rgb for rgb, _ in pixels], identity, records


# ------------------------------------------------------------------------ reading


def test_insightface_layout_with_split_record_and_label_array(tmp_path):
    folder, pixels, identity, records = insightface_folder(tmp_path)
    assert is_rec_folder(folder) and not is_rec_folder(tmp_path)
    dataset = RecordDataset(folder, verbose=False)
    assert dataset.classes == ['0', '1'] and len(dataset) == 5
    assert list(dataset.samples) == [(key, who) for key, who in zip(range(1, 6), identity)]
    for index in range(5):
        image, label = dataset[index]
        assert label == identity[index]
        np.testing.assert_array_equal(np.asarray(image), pixels[index])
    # the split payload joined with the magic word put back; our writer splits it at the same places
    whole = RecordFile(folder / 'train.rec').read(2)
    assert whole[8:12] == MAGIC_WORD and whole[16:20] == MAGIC_WORD
    assert frame_record(whole) == records[2][1]
    assert frame_record(pack_payload([1, 7.0], b'xyz', 4)) == framed(0, payload(2, 0.0, 4, (1, 7.0), b'xyz'))


def test_images_only_layout_labels_from_headers(tmp_path):
    """No insightface record 0: every .idx key is an image (key 0 too, its flag being 0); classes are the distinct
    labels, sorted, whether a label is the header's float or the first of its label array."""
    labels = [5.0, 5.0, 9.0, 2.0]
    pixels = [png(10 + i) for i in range(4)]
    records = [(key, framed(0, payload(0, label, key, (), image))) for key, (label, (_, image))
               in enumerate(zip(labels, pixels))]
    records[2] = (2, framed(0, payload(1, 0.0, 2, (9.0,), pixels[2][1])))
    dataset = RecordDataset(write_files(tmp_path / 'plain', records), verbose=False)
    assert dataset.classes == ['2', '5', '9']
    assert dataset.targets.tolist() == [1, 1, 2, 0]
    np.testing.assert_array_equal(np.asarray(dataset[3][0]), pixels[3][0])
    # and with no key 0 at all
    dataset = RecordDataset(write_files(tmp_path / 'from1', records[1:]), verbose=False)
    assert dataset.classes == ['2', '5', '9'] and dataset.targets.tolist() == [1, 2, 0]


def test_summary_names_identities_and_images(tmp_path, capsys):
    folder, *_ = insightface_folder(tmp_path)
    RecordDataset(folder)
    assert 'train.rec: 2 identities, 5 images (insightface layout' in capsys.readouterr().out


# ------------------------------------------------------------------------ corrupt files: one line, file and offset


def one_line(error, *parts):
    message = str(error.value)
    assert '\n' not in message, message
    for part in parts:
        assert str(part) in message, message
    return message


def test_bad_magic_names_file_and_offset(tmp_path):
    folder, _, _, records = insightface_folder(tmp_path)
    offset = len(b''.join(data for _, data in records[:3]))  # image 3
    rec = bytearray((folder / 'train.rec').read_bytes())
    rec[offset] ^= 0xFF
    (folder / 'train.rec').write_bytes(bytes(rec))
    dataset = RecordDataset(folder, verbose=False)  # start-up does not read images
    with pytest.raises(RecordIOError) as error:
        dataset[2]
    assert 'bad magic' in one_line(error, folder / 'train.rec', f'byte {offset}')


def test_truncated_rec_and_idx_offset_past_end(tmp_path):
    folder, _, _, records = insightface_folder(tmp_path)
    rec = (folder / 'train.rec').read_bytes()
    last_image = len(b''.join(data for _, data in records[:5]))  # key 5, then the identity records
    # identity records cut off: start-up stops at once
    (folder / 'train.rec').write_bytes(rec[:last_image + 40])
    with pytest.raises(RecordIOError) as error:
        RecordDataset(folder, verbose=False)
    one_line(error, folder / 'train.idx', 'past the end')
    # an image record cut short: its length runs past the end of the file
    records = records[:6]
    write_files(folder, records)
    (folder / 'train.rec').write_bytes((folder / 'train.rec').read_bytes()[:last_image + 30])
    with pytest.raises(RecordIOError) as error:
        RecordFile(folder / 'train.rec').read(5)
    assert 'runs past the end' in one_line(error, folder / 'train.rec', f'byte {last_image}')
    # an .idx offset past the end
    (folder / 'train.idx').write_text('0\t0\n1\t999999\n')
    with pytest.raises(RecordIOError) as error:
        RecordFile(folder / 'train.rec')
    one_line(error, folder / 'train.idx', 'byte offset 999999')


def test_error_from_a_worker_keeps_its_one_line(tmp_path):
    folder, _, _, records = insightface_folder(tmp_path)
    rec = bytearray((folder / 'train.rec').read_bytes())
    offset = len(records[0][1])
    rec[offset:offset + 4] = b'JUNK'
    (folder / 'train.rec').write_bytes(bytes(rec))
    dataset = RecordDataset(folder, verbose=False)
    try:
        dataset[0]
    except RecordIOError:  # what a DataLoader worker does with it: the main process raises it again from its text
        wrapped = ExceptionWrapper(where='in DataLoader worker process 0')
    with pytest.raises(RecordIOError) as error:
        wrapped.reraise()
    assert one_line(error, f'byte {offset}').startswith(str(folder / 'train.rec'))


def test_undecodable_image_is_named_and_replaced(tmp_path, capsys):
    pixels = [png(20 + i) for i in range(3)]
    records = [(key, framed(0, payload(0, key, key, (), image))) for key, (_, image) in enumerate(pixels)]
    records[1] = (1, framed(0, payload(0, 1.0, 1, (), b'\x89PNG not really')))
    dataset = RecordDataset(write_files(tmp_path / 'broken', records), verbose=False)
    image, label = dataset[1]
    assert label == 2 and dataset.undecodable == 1
    np.testing.assert_array_equal(np.asarray(image), pixels[2][0])
    assert 'record 1 at byte' in capsys.readouterr().err


# ------------------------------------------------------------------------ loading: seeded transforms, workers


def draw(image):
    return torch.rand(4)  # what a random transform draws from torch's generator


def test_transforms_seeded_by_sample_and_epoch(tmp_path):
    folder, *_ = insightface_folder(tmp_path)
    dataset = RecordDataset(folder, draw, verbose=False, seed=3)
    state = torch.get_rng_state()
    first = dataset[4][0]
    assert torch.equal(first, dataset[4][0]) and not torch.equal(first, dataset[3][0])
    assert torch.equal(state, torch.get_rng_state())  # the training step's generator is left alone
    dataset.set_epoch(1)
    assert not torch.equal(first, dataset[4][0])
    assert not torch.equal(first, RecordDataset(folder, draw, verbose=False, seed=4)[4][0])


def test_dataloader_workers_open_their_own_file(tmp_path):
    folder, pixels, identity, _ = insightface_folder(tmp_path)
    dataset = RecordDataset(folder, T.ToTensor(), verbose=False)
    assert dataset.file._file is None  # nothing open to hand to the workers
    clone = pickle.loads(pickle.dumps(dataset))  # what spawn does
    assert len(clone) == 5
    dataset[0]
    assert dataset.file._file is not None
    assert pickle.loads(pickle.dumps(dataset)).file._file is None
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    labels = torch.cat([label for _, label in loader]).tolist()
    assert labels == identity


# ------------------------------------------------------------------------ the writer


def test_pack_round_trip_against_the_image_folder(tmp_path, capsys):
    """pack: class i of the .rec is class i of the folder; PNGs of the stored size are kept byte for byte (same
    pixels); other sizes are resized; an unreadable image is skipped and named."""
    source = tmp_path / 'faces'
    for person in range(3):
        (source / f'person_{person}').mkdir(parents=True)
        for n in range(person + 1):
            rgb, data = png(100 + 10 * person + n, (16, 16))
            (source / f'person_{person}' / f'{n}.png').write_bytes(data)
    big, _ = png(7, (40, 30))
    cv2.imwrite(str(source / 'person_1' / 'big.png'), big)
    (source / 'person_2' / 'broken.png').write_bytes(b'not a png')
    assert main(['pack', '--source', str(source), '--out', str(tmp_path / 'rec'), '--size', '16',
                 '--encoding', 'png']) == 0
    out = capsys.readouterr().out
    assert '3 identities, 7 images (6 stored as they were, 1 encoded as 16x16 png); skipped 1 unreadable: ' \
           'person_2/broken.png' in out
    assert (tmp_path / 'rec' / 'property').read_text() == '3,16,16\n'
    packed = RecordDataset(tmp_path / 'rec', verbose=False)
    folder = ImageFolderDataset(source, verbose=False)
    assert len(packed.classes) == len(folder.classes) == 3 and len(packed) == len(folder) == 7
    assert packed.targets.tolist() == folder.targets
    for index, (path, _) in enumerate(folder.samples):
        image, label = packed[index]
        if not path.endswith('big.png'):
            np.testing.assert_array_equal(np.asarray(image), np.asarray(folder[index][0]))
        assert image.size == (16, 16)


def test_pack_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(['pack', '--source', str(tmp_path / 'absent'), '--out', str(tmp_path / 'rec')])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f'error: --source: image folder not found: {tmp_path / "absent"}'
