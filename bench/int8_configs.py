"""int8 quantization settings of one exported detector, measured in one run: for each setting, the network's forward
time beside the fp32 file's (alternating, on one image), the drift on the calibration images, and optionally the
WIDER FACE AP the training script's --evaluate gives. The table behind common/quantize.py's choices
(docs/deployment.md, "int8").

    python export.py --weights ../shared/data/weights/retinaface_mobilenet0.25_Final.pth --network mobile0.25 \
        --out mnet.onnx
    python bench/real_widerface.py --out data/real_val10
    python bench/int8_configs.py --weights mnet.onnx --calibration ../shared/data/widerface/val_416/images \
        --image ../shared/data/photos/crowd_1024x624.jpg --data-root data/real_val10 [--configs stem all ...]

Settings (--configs): every node int8 ('all'), the first conv and its activation fp32 ('first'), the output heads
fp32 ('heads'), both ('first+heads'), the stem fp32 ('stem', what export.py --int8 picks when everything int8
drifts too far), the stem and the heads fp32 ('stem+heads'), the stem and every depthwise conv fp32
('stem+depthwise'); and on the stem setting: the QDQ format
('stem qdq'), int8 activations ('stem s8'), 7-bit weights ('stem reduce_range'), Entropy and Percentile
calibration ('stem entropy', 'stem percentile'). Forward time: onnxruntime with --threads threads, the median of
--repeats runs, each setting alternating with the fp32 file run for run so that load from other processes falls on
both; the CPU time of the process is printed beside the wall time (with one thread it is the network's own work,
which other processes hardly move). AP: `finetune_retinaface.py --evaluate --weights FILE` (or train_centernet.py's,
--script) on --data-root, in a subprocess; fp32's first.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common import runtime  # noqa: E402
from common.data.images import read_image  # noqa: E402
from common.inference.load import build_detector  # noqa: E402
from common.quantize import quantize_detector, stem_nodes  # noqa: E402

ACTIVATIONS = ('Relu', 'LeakyRelu', 'Clip')


def with_activation(model, convs) -> list[str]:
    """The conv nodes and the activation each one feeds alone, if any."""
    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    names = []
    for node in model.graph.node:
        if node.name in convs:
            names.append(node.name)
            after = readers.get(node.output[0], [])
            if len(after) == 1 and after[0].op_type in ACTIVATIONS:
                names.append(after[0].name)
    return names


def node_sets(model) -> dict:
    """Named sets of nodes to keep in fp32, found from the graph's structure."""
    producer = {o: node for node in model.graph.node for o in node.output}
    convs = [node for node in model.graph.node if node.op_type == 'Conv']
    heads, stack, seen = set(), [producer[o.name] for o in model.graph.output if o.name in producer], set()
    while stack:  # the convs an output is reached from without passing another conv
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == 'Conv':
            heads.add(node.name)
        else:
            stack += [producer[i] for i in node.input if i in producer and producer[i].op_type != 'Shape']
    depthwise = {n.name for n in convs if any(a.name == 'group' and a.i > 1 for a in n.attribute)}
    first = with_activation(model, {convs[0].name})
    return {'all': [], 'first': first, 'heads': with_activation(model, heads),
            'first+heads': first + with_activation(model, heads), 'stem': stem_nodes(model),
            'stem+heads': stem_nodes(model) + with_activation(model, heads),
            'stem+depthwise': stem_nodes(model) + with_activation(model, depthwise)}


SETTINGS = {  # name -> (node set kept fp32, quantize_detector keywords)
    'all': ('all', {}), 'first': ('first', {}), 'heads': ('heads', {}), 'first+heads': ('first+heads', {}),
    'stem': ('stem', {}), 'stem+heads': ('stem+heads', {}), 'stem+depthwise': ('stem+depthwise', {}),
    'stem qdq': ('stem', {'quant_format': 'qdq'}), 'stem s8': ('stem', {'activations': 'int8'}),
    'stem reduce_range': ('stem', {'reduce_range': True}), 'stem entropy': ('stem', {'method': 'entropy'}),
    'stem percentile': ('stem', {'method': 'percentile'}),
}


def forward_times(files, image, threads: int, repeats: int) -> list[dict]:
    """{'wall', 'cpu'} median ms per forward of each file on `image` (detect.py's input for it), run in turns."""
    torch.set_num_threads(threads)
    detectors = [build_detector(f, None, 'cpu') for f in files]
    batch, _ = detectors[0].prepare([image])
    models = [d.model for d in detectors]
    for model in models:
        model(batch)
    wall, cpu = [[] for _ in files], [[] for _ in files]
    for _ in range(repeats):
        for i, model in enumerate(models):
            started, started_cpu = time.perf_counter(), time.process_time()
            model(batch)
            wall[i].append((time.perf_counter() - started) * 1000)
            cpu[i].append((time.process_time() - started_cpu) * 1000)
    return [{'wall': statistics.median(w), 'cpu': statistics.median(c)} for w, c in zip(wall, cpu)]


def evaluate(script, weights, data_root, out) -> dict:
    done = subprocess.run([sys.executable, str(REPO / script), '--data-root', str(data_root), '--evaluate',
                           '--weights', str(weights), '--device', 'cpu', '--workers', '1', '--out', str(out)],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f'{script} --evaluate {weights}: {done.stderr[-500:]}')
    return json.loads((Path(out) / 'results.json').read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--weights', required=True, help='an fp32 detector .onnx from export.py')
    parser.add_argument('--calibration', required=True, help='folder of calibration images')
    parser.add_argument('--calibration-images', type=int, default=100)
    parser.add_argument('--image', required=True, help='the image the forward pass is timed on')
    parser.add_argument('--configs', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--data-root', default=None, help='a WIDER FACE root for the AP (none: no AP)')
    parser.add_argument('--script', default='finetune_retinaface.py', help='whose --evaluate gives the AP')
    parser.add_argument('--keep', default=None, help='folder to keep the int8 files in (default: a temporary one)')
    args = parser.parse_args(argv)
    fp32 = runtime.require_path(args.weights, '--weights', 'fp32 .onnx file')
    image = read_image(runtime.require_path(args.image, '--image', 'image'))
    sets = node_sets(onnx.load(str(fp32)))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        folder = Path(args.keep or work)
        folder.mkdir(parents=True, exist_ok=True)
        ap_fp32 = evaluate(args.script, fp32, args.data_root, Path(work) / 'ap_fp32') if args.data_root else {}
        print(f'fp32 {fp32}: AP {ap_fp32}', flush=True)
        for name in args.configs:
            kept, options = SETTINGS[name]
            out = folder / f'{fp32.stem}_{name.replace(" ", "_").replace("+", "_")}.onnx'
            started = time.perf_counter()
            report = quantize_detector(fp32, out, args.calibration, images=args.calibration_images, tolerance=None,
                                       keep_fp32=sets[kept], log=lambda *a: None, **options)
            quantized_s = time.perf_counter() - started
            timed_fp32, timed = forward_times([fp32, out], image, args.threads, args.repeats)
            ap = evaluate(args.script, out, args.data_root, Path(work) / f'ap_{out.stem}') if args.data_root else {}
            row = {'setting': name, 'fp32_convs': len(report['fp32_convs']), 'drift': report['drift'],
                   'forward_ms': round(timed['wall'], 1), 'fp32_forward_ms': round(timed_fp32['wall'], 1),
                   'cpu_ms': round(timed['cpu'], 1), 'fp32_cpu_ms': round(timed_fp32['cpu'], 1),
                   'speedup_cpu': round(timed_fp32['cpu'] / timed['cpu'], 2),
                   'quantize_s': round(quantized_s, 1), **{k: round(v, 4) for k, v in ap.items()},
                   **{f'{k}_delta': round(v - ap_fp32[k], 4) for k, v in ap.items() if k in ap_fp32}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f'{"setting":<18} {"fp32 convs":>10} {"drift":>7} {"int8 ms":>8} {"fp32 ms":>8} {"cpu x":>6}  AP (delta)')
    for row in rows:
        ap = '  '.join(f'{row[k]:.4f} ({row[k + "_delta"]:+.4f})' for k in ('easy', 'medium', 'hard') if k in row)
        print(f'{row["setting"]:<18} {row["fp32_convs"]:>10} {row["drift"]:>7.4f} {row["forward_ms"]:>8.1f} '
              f'{row["fp32_forward_ms"]:>8.1f} {row["speedup_cpu"]:>5.2f}x  {ap}')
    return rows


if __name__ == '__main__':
    main()
