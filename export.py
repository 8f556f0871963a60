"""Export a detector to ONNX: any of our detector checkpoints (RetinaFace, CenterFace, the converted released
CenterFace) or a Pytorch_Retinaface state dict, with dynamic batch, height and width. The graph holds the network
(BatchNorm folded, pixel normalisation inside) and outputs its raw heads; decoding and NMS stay in Python
(common/inference/), so `detect.py --weights M.onnx` runs it through the same pre- and post-processing. The file's
metadata records the arch, the pixel convention and what the decoder assumes (priors settings for RetinaFace), see
common/inference/onnx_model.py. A recognition checkpoint (train_recognition.py, or the released MobileFaceNet file)
exports the same way: aligned BGR crops of its input size in (dynamic batch; the input convention inside), the
embedding out (`detect.py --recognizer M.onnx` runs it).

A Pytorch_Retinaface state dict (say which backbone), then detection with onnxruntime:
    python export.py --weights ../shared/data/weights/retinaface_mobilenet0.25_Final.pth --network mobile0.25 \
        --out mnet.onnx
    python detect.py --weights mnet.onnx --source photos/ --save-txt
Our checkpoints carry their arch:
    python export.py --weights runs/retinaface/best.pt --out retinaface.onnx
    python export.py --weights weights/centerface.pt --out centerface.onnx     # from python -m common.models.convert
    python export.py --weights weights/mobilefacenet.pt --out mobilefacenet.onnx

The export checks itself before the file is written: onnxruntime runs the file on random pixels of another batch and
size than the traced ones (--check-size) and every output must equal PyTorch's (the network as loaded, BatchNorm
not folded) within --tolerance; otherwise it exits 1 and writes nothing. Uses torch's exporter (torch.export-based,
which needs the onnxscript package).

int8 (detectors): onnxruntime's static quantization, calibrated on the images under --calibration (recursively, at
most --calibration-images of them) as detect.py feeds them to the network; the file records how, on what, and its
drift from the fp32 file, and is not written when that drift exceeds --int8-tolerance (exit 1). From a checkpoint
(traced and checked first) or from an fp32 export:
    python export.py --weights runs/retinaface/best.pt --out retinaface_int8.onnx --int8 \
        --calibration data/widerface/val/images
    python export.py --weights mnet.onnx --out mnet_int8.onnx --int8 --calibration ../shared/data/widerface/val_416
    python detect.py --weights mnet_int8.onnx --source photos/
What it measured (the layers kept in fp32 and why, speed, AP): docs/deployment.md, section "int8".
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import runtime
from common.checkpoint import CheckpointError
from common.inference.load import load_detector_model
from common.inference.onnx_model import INPUT_NAME, export_record, metadata_for
from common.inference.recognizer import is_recognition_file, load_recognition_model
from common.models import fuse_for_inference
from common.models.recognition import FacePixels
from common.models.retinaface import NETWORKS as RETINAFACE_NETWORKS
from common.quantize import DEFAULT_TOLERANCE, QuantizationRefused, quantize_detector


class SelfCheckFailed(RuntimeError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    g = parser.add_argument_group('model')
    g.add_argument('--weights', required=True, help='our checkpoint, a Pytorch_Retinaface state dict, or (with '
                   '--int8) an fp32 .onnx file from export.py')
    g.add_argument('--network', default=None, choices=list(RETINAFACE_NETWORKS),
                   help='backbone of a Pytorch_Retinaface state dict (our checkpoints carry their own)')
    g = parser.add_argument_group('export')
    g.add_argument('--out', required=True, help='the .onnx file to write')
    g.add_argument('--opset', type=int, default=18, help='ONNX opset (torch\'s exporter supports 18 and later)')
    g.add_argument('--trace-size', type=int, nargs=2, default=(480, 640), metavar=('H', 'W'),
                   help='input size traced (any size works afterwards)')
    g.add_argument('--check-size', type=int, nargs=2, default=(352, 288), metavar=('H', 'W'),
                   help='input size of the self-check, another than --trace-size')
    g.add_argument('--tolerance', type=float, default=1e-4, help='largest output difference to PyTorch accepted')
    g = parser.add_argument_group('int8')
    g.add_argument('--int8', action='store_true', help='write an int8 file (detectors; needs --calibration)')
    g.add_argument('--calibration', default=None, help='folder of images (searched recursively) the activation '
                   'ranges are calibrated on, run through detect.py\'s preprocessing at the sizes it feeds them')
    g.add_argument('--calibration-images', type=int, default=100,
                   help='at most this many of them, spread evenly over the sorted folder')
    g.add_argument('--int8-tolerance', type=float, default=DEFAULT_TOLERANCE,
                   help='largest drift accepted: 1 - AP of the int8 detections on the calibration images against the '
                        'fp32 file\'s confident ones (score >= 0.5)')
    args = parser.parse_args(argv)
    if tuple(args.trace_size) == tuple(args.check_size):
        parser.error('--check-size must differ from --trace-size: the check is for the dynamic shapes')
    return args


def dynamic_shapes(multiple: int | None, fixed_size: bool = False):
    """torch.export dims for (B, 3, H, W): batch free, height and width free or multiples of `multiple` (or fixed)."""
    batch = torch.export.Dim('batch', min=1, max=1024)
    if fixed_size:
        return ({0: batch},)
    if multiple:
        height = multiple * torch.export.Dim(f'height_div_{multiple}', min=1, max=16384 // multiple)
        width = multiple * torch.export.Dim(f'width_div_{multiple}', min=1, max=16384 // multiple)
    else:  # a lower bound above one stride-32 cell lets the exporter prove its shape formulas; the graph runs at
        # any size (tests/test_export.py runs 20 x 20)
        height = torch.export.Dim('height', min=33, max=16384)
        width = torch.export.Dim('width', min=33, max=16384)
    return ({0: batch, 2: height, 3: width},)


def round_to(size, multiple):
    return [max(multiple, s // multiple * multiple) for s in size] if multiple else list(size)


def input_size(arch, size):
    """The (H, W) to trace or check at: `size` rounded to the network's multiple, or its fixed size (recognition)."""
    pixels = export_record(arch).pixels(arch)
    return list(pixels['size']) if pixels.get('size') else round_to(size, pixels['size_multiple'])


def random_pixels(batch, size, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *size, generator=generator) * 255


def flat_outputs(outputs, names):
    if isinstance(outputs, torch.Tensor):  # one output (a recognition network's embedding)
        return [outputs]
    return [outputs[n] for n in names] if isinstance(outputs, dict) else list(outputs)


def trace(model, arch, opset: int, trace_size):
    """The ONNX model (onnx.ModelProto) of `model` fused for inference, traced on a batch of 2 at `trace_size` with
    dynamic batch, height and width, and its metadata."""
    record = export_record(arch)
    pixels = record.pixels(arch)
    program = torch.onnx.export(fuse_for_inference(model), (random_pixels(2, input_size(arch, trace_size), 0),),
                                dynamo=True, input_names=[INPUT_NAME], output_names=list(record.outputs),
                                opset_version=opset, verbose=False,
                                dynamic_shapes=dynamic_shapes(pixels['size_multiple'], bool(pixels.get('size'))))
    proto = program.model_proto
    for key, value in metadata_for(arch).items():
        proto.metadata_props.add(key=key, value=value)
    return proto


def write_checked(proto, model, arch, out: Path, check_size, tolerance: float) -> dict:
    """Write `proto` to `out` only if onnxruntime running it on random pixels (a batch of 3 at `check_size`) gives
    every output of `model` within `tolerance`: written to a temporary file, checked, then renamed. Returns the
    differences; raises SelfCheckFailed (and writes nothing) otherwise."""
    import onnx
    import onnxruntime
    record = export_record(arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{out.name}.', suffix='.tmp', dir=out.parent)
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        session = onnxruntime.InferenceSession(tmp, providers=['CPUExecutionProvider'])
        pixels = random_pixels(3, input_size(arch, check_size), seed=1)
        theirs = session.run(list(record.outputs), {INPUT_NAME: pixels.numpy()})
        with torch.no_grad():
            ours = flat_outputs(model.eval()(pixels), record.outputs)
        differences = {name: float(np.abs(t - o.numpy()).max()) for name, t, o in zip(record.outputs, theirs, ours)}
        if not max(differences.values()) <= tolerance:
            raise SelfCheckFailed(f'onnxruntime differs from PyTorch by up to {max(differences.values()):.2e} > '
                                  f'{tolerance:g} on a {tuple(pixels.shape)} input ({differences}); nothing written')
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {'differences': differences, 'check_shape': tuple(pixels.shape)}


def main(args):
    weights = runtime.require_path(args.weights, '--weights', 'weights file')
    out = Path(args.out)
    if out.suffix.lower() != '.onnx':
        runtime.fail(f'--out {out}: give the file an .onnx suffix (detect.py tells an ONNX model by it)')
    if args.int8 != bool(args.calibration):
        runtime.fail('--int8 needs --calibration DIR (images to calibrate on)' if args.int8 else
                     f'--calibration {args.calibration}: only with --int8')
    if args.int8:
        runtime.require_path(args.calibration, '--calibration', 'image folder')
        if args.calibration_images < 1:
            runtime.fail(f'--calibration-images {args.calibration_images}: at least 1')
    if weights.suffix.lower() == '.onnx':
        if not args.int8:
            runtime.fail(f'--weights {weights}: already an ONNX file; export takes a PyTorch checkpoint (or quantizes '
                         f'an fp32 export with --int8)')
        return quantize(weights, out, args)
    if args.int8:  # the fp32 file, traced and checked, is what gets quantized
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f'.{out.name}.', dir=out.parent) as work:
            export(weights, Path(work) / 'fp32.onnx', args)
            return quantize(Path(work) / 'fp32.onnx', out, args)
    return export(weights, out, args)


def export(weights, out, args) -> dict:
    try:
        if is_recognition_file(weights):  # its input convention goes into the graph, in front of the network
            if args.int8:
                runtime.fail(f'--int8: detectors only; {weights} is a recognition network')
            model, arch = load_recognition_model(weights)
            model = FacePixels(model, arch['input'])
        else:
            model, arch = load_detector_model(weights, args.network, 'cpu')
        export_record(arch)  # fail before the slow trace for a network without an export
        height, width = input_size(arch, args.trace_size)
        shapes = f'dynamic batch, {height} x {width} crops' if arch['name'] == 'recognition' else \
            'dynamic batch, height, width'
        print(f'exporting {arch} from {weights} (opset {args.opset}, {shapes})', flush=True)
        started = time.perf_counter()
        proto = trace(model, arch, args.opset, args.trace_size)
        traced_s = time.perf_counter() - started
        report = write_checked(proto, model, arch, out, args.check_size, args.tolerance)
    except CheckpointError as e:
        runtime.fail(f'--weights: {e}')
    except SelfCheckFailed as e:
        runtime.fail(f'self-check: {e}', 1)
    differences = ', '.join(f'{k} {v:.1e}' for k, v in report['differences'].items())
    print(f'traced in {traced_s:.1f} s; self-check on {report["check_shape"]}: max |onnxruntime - PyTorch| '
          f'{differences} (tolerance {args.tolerance:g})')
    if not args.int8:
        print(f'wrote {out} ({out.stat().st_size / 1e6:.1f} MB)')
    return report


def quantize(fp32, out, args) -> dict:
    """--int8: common/quantize.py on the fp32 file `fp32`."""
    print(f'quantizing to int8, calibrated on at most {args.calibration_images} images of {args.calibration}',
          flush=True)
    started = time.perf_counter()
    try:
        report = quantize_detector(fp32, out, args.calibration, images=args.calibration_images,
                                   tolerance=args.int8_tolerance)
    except CheckpointError as e:
        runtime.fail(f'--weights: {e}')
    except FileNotFoundError as e:
        runtime.fail(f'--calibration: {e}')
    except QuantizationRefused as e:
        runtime.fail(f'int8: {e}', 1)
    calibration = report['calibration']
    kept = f'{len(report["fp32_convs"])} convs kept fp32 ({report["fp32"]}: {", ".join(report["fp32_convs"])})' \
        if report['fp32_convs'] else 'every conv int8'
    labels = {'none': 'all int8', 'stem': 'the stem fp32'}
    tried = ', '.join(f'{labels.get(t["fp32"], t["fp32"])} {t["drift"]:.4f}' for t in report['tried'])
    print(f'calibrated on {calibration["images"]} images ({calibration["method"]}) in '
          f'{time.perf_counter() - started:.1f} s; {kept}; drift {report["drift"]:.4f} (tolerance '
          f'{args.int8_tolerance:g}; tried {tried})')
    print(f'wrote {out} ({out.stat().st_size / 1e6:.1f} MB, int8)')
    return report


if __name__ == '__main__':
    main(parse_args())
