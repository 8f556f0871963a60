"""Our detectors (and recognition networks) as .onnx files: what export.py records in a file's metadata, and
`OnnxModel`, which runs such a file with onnxruntime behind the interface of our PyTorch networks, so
common.inference.detectors.FaceDetector (and with it detect.py, the benchmarks and the WIDER FACE evaluation) runs it
through the same pre- and post-processing (a recognition file: common.inference.recognizer.Recognizer).

A file's graph takes `images` (B,3,H,W) float32 BGR 0..255 (B, H and W dynamic; the normalisation is inside) and
outputs the network's raw heads, named as in EXPORTS (a recognition file: aligned crops of its fixed H x W in, the
embedding out). Its metadata (string values, JSON where structured):
    facekit_arch      the checkpoint's `arch`: which network, hence which decoder
    facekit_outputs   the output names in the order the network returns them, and whether it returns a dict
    facekit_pixels    the pixel convention: layout, dtype, channel order, range, what the graph does with them, the
                      padding colour and size multiple detect.py uses
    facekit_decoding  what the decoder assumes of the outputs: priors settings for RetinaFace, the heatmap encoding
                      for CenterFace, the anchors for RetinaNet. Loading compares it with this version's decoder and
                      refuses a file made for another.
    facekit_int8      only in an int8 file (export.py --int8, common/quantize.py): how it was quantized,
                      on which images it was calibrated, which layers stayed fp32, its drift from the fp32 file
"""
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..anchors import RETINAFACE_MIN_SIZES, RETINAFACE_STEPS, RETINANET_STRIDES, RETINANET_VARIANCES, VARIANCES
from ..checkpoint import CheckpointError
from ..models import input_convention


class ExportRecord(NamedTuple):
    outputs: tuple       # graph output names, in the order the network returns them (a dict's keys for a dict)
    returns_dict: bool   # the network returns {name: tensor} (else a tuple)
    decoding: object     # arch -> dict: what the decoder assumes of the outputs, recorded as facekit_decoding
    pixels: object       # arch -> dict: the pixel convention, recorded as facekit_pixels ('size_multiple' is read)


def _detector_pixels(arch: dict) -> dict:
    convention = input_convention(arch)
    return {'input': INPUT_NAME, 'layout': 'NCHW', 'dtype': 'float32', 'channels': 'BGR', 'range': [0, 255],
            'in_graph': convention.pixels, 'pad_bgr': list(convention.pad_bgr),
            'size_multiple': convention.size_multiple}


def _recognition_pixels(arch: dict) -> dict:
    from ..models.recognition import INPUTS
    face = INPUTS[arch['input']]
    conversion = 'to gray (0.299 R + 0.587 G + 0.114 B)' if face.channels == 1 else 'to RGB'
    return {'input': INPUT_NAME, 'layout': 'NCHW', 'dtype': 'float32', 'channels': 'BGR', 'range': [0, 255],
            'in_graph': f'{conversion}, (p - {face.mean}) / {face.std}', 'size': [face.height, face.width],
            'template': face.template, 'size_multiple': None}


def _recognition_decoding(arch: dict) -> dict:
    return {'embedding': 'the raw (B, D) output; a face\'s embedding is the L2-normalised sum of the crop\'s and '
                         'the mirrored crop\'s (or the crop\'s alone)'}


def _retinaface_decoding(arch: dict) -> dict:
    return {'priors': {'min_sizes': [list(s) for s in RETINAFACE_MIN_SIZES], 'steps': list(RETINAFACE_STEPS),
                       'variances': list(VARIANCES), 'feature_map': 'ceil(H / step) x ceil(W / step)',
                       'order': 'level, row, column, min size', 'clip': False},
            'conf': 'logits; softmax column 1 = face', 'loc': 'centre offsets and log sizes over the priors',
            'landmarks': 'x, y offsets over the priors'}


def _retinanet_decoding(arch: dict) -> dict:
    return {'anchors': {key: list(arch[key]) for key in ('anchor_sizes', 'anchor_scales', 'anchor_ratios')}
            | {'strides': list(RETINANET_STRIDES), 'variances': list(RETINANET_VARIANCES),
               'feature_map': 'ceil(H / stride) x ceil(W / stride)', 'order': 'level, row, column, scale, ratio'},
            'cls_logits': 'logits; sigmoid per class', 'box_offsets': 'centre offsets and log sizes over the anchors',
            'input': f'the image padded to a square and resized to {arch["size"]}'}


def _centerface_decoding(arch: dict) -> dict:
    released = arch.get('variant') == 'released'
    return {'stride': int(arch.get('down', 4)), 'hm': 'logits; sigmoid = face score',
            'off': 'centre = (cell + off) * stride, x then y', 'wh': 'log(size / stride), w then h',
            'lm': '(landmark - box top-left) / box size, x then y',
            'candidates': 'every cell' if released else 'heatmap peaks (3x3 max-pool)',
            'border': 'boxes crossing the left / top edge start at it, keeping their size' if released else 'none'}


INPUT_NAME = 'images'
INT8_KEY = 'facekit_int8'  # the entry only int8 files have
# arch['name'] -> what a file of that network holds; a new detector family is one entry here. A recognition file
# takes aligned crops of one fixed size (pixels['size']) and outputs the embedding.
EXPORTS = {
    'recognition': ExportRecord(('embedding',), False, _recognition_decoding, _recognition_pixels),
    'retinaface': ExportRecord(('loc', 'conf', 'landmarks'), False, _retinaface_decoding, _detector_pixels),
    'centerface': ExportRecord(('hm', 'wh', 'off', 'lm'), True, _centerface_decoding, _detector_pixels),
    'retinanet': ExportRecord(('cls_logits', 'box_offsets'), False, _retinanet_decoding, _detector_pixels),
}


def export_record(arch: dict) -> ExportRecord:
    if arch.get('name') not in EXPORTS:
        raise CheckpointError(f'no ONNX export for network {arch.get("name")!r} (known: {", ".join(EXPORTS)})')
    return EXPORTS[arch['name']]


def metadata_for(arch: dict) -> dict:
    """The metadata entries (str -> str) export.py writes into a file of network `arch`."""
    record = export_record(arch)
    return {'facekit_arch': json.dumps(arch), 'facekit_pixels': json.dumps(record.pixels(arch)),
            'facekit_outputs': json.dumps({'names': list(record.outputs), 'dict': record.returns_dict}),
            'facekit_decoding': json.dumps(record.decoding(arch))}


def read_metadata(path) -> dict:
    """The facekit metadata of an .onnx file, or CheckpointError (one line) when it has none or a broken one."""
    import onnx
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise CheckpointError(f'{path}: not a readable ONNX model ({type(e).__name__})') from None
    meta = {p.key: p.value for p in model.metadata_props}
    if 'facekit_arch' not in meta:
        raise CheckpointError(f'{path}: no facekit metadata (not written by export.py); for the authors\' released '
                              f'CenterFace file run python -m common.models.convert --centerface-onnx {path} '
                              f'--out centerface.pt')
    try:
        return {k: json.loads(v) for k, v in meta.items() if k.startswith('facekit_')}
    except json.JSONDecodeError as e:
        raise CheckpointError(f'{path}: damaged facekit metadata ({e})') from None


class OnnxModel:
    """`model(images (B,3,H,W) uint8 or float BGR) -> the outputs our PyTorch network returns` (a tuple, or a dict
    of its heads), as CPU tensors, computed by onnxruntime. `model.arch` is the file's arch; `model.providers` the
    onnxruntime providers in use (CUDA when `device` is a CUDA device and onnxruntime has that provider);
    `model.int8` the quantization record of an int8 file (None for fp32)."""

    def __init__(self, path, device='cpu', threads: int | None = None):
        import onnxruntime
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f'{path}: not found')
        meta = read_metadata(path)
        self.arch = meta['facekit_arch']
        record = export_record(self.arch)
        if meta.get('facekit_decoding') != record.decoding(self.arch):
            raise CheckpointError(f'{path}: exported for another decoder than this version\'s '
                                  f'(recorded {meta.get("facekit_decoding")}); export it again with export.py')
        self.int8 = meta.get(INT8_KEY)
        self.output_names = list(meta['facekit_outputs']['names'])
        self.returns_dict = bool(meta['facekit_outputs']['dict'])
        options = onnxruntime.SessionOptions()
        # as many threads as torch uses, so `torch.set_num_threads` (bench --threads) governs both runtimes
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # idle onnxruntime threads otherwise spin for a while after each run, taking the cores from the decode and
        # NMS that follow in torch (measured: postprocess 10x slower on 2 cores)
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        providers = ['CPUExecutionProvider']
        if torch.device(device).type == 'cuda' and 'CUDAExecutionProvider' in onnxruntime.get_available_providers():
            providers.insert(0, 'CUDAExecutionProvider')
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()

    def __call__(self, images: torch.Tensor):
        # one pass: uint8 (possibly a view of HWC images) -> float32 in the NCHW order the graph reads
        pixels = images.to(torch.float32, memory_format=torch.contiguous_format).numpy()
        outputs = [torch.from_numpy(np.asarray(o)) for o in
                   self.session.run(self.output_names, {INPUT_NAME: pixels})]
        return dict(zip(self.output_names, outputs)) if self.returns_dict else tuple(outputs)

    def eval(self):  # the interface FaceDetector and the training scripts' evaluation call
        return self
