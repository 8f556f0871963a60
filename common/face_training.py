"""What the WIDER FACE detector scripts (finetune_retinaface.py, train_centernet.py) share around their own network
and loss: the train split and its loader, the evaluation flags, the val evaluation run during training, and the
`--evaluate --weights W` mode.

`--data-root` holds train/ and val/ (label.txt + images/) and ground_truth/ (the official .mat files).
"""
from pathlib import Path

from . import engine, runtime
from .checkpoint import CheckpointError
from .datasets import LabelFormatError, WiderFaceDataset, detection_collate
from .detector import FaceDetector, load_detector_model
from .evaluation.widerface import evaluate_on_split
from .transforms import TrainTransform


def add_evaluation_flags(group):
    group.add_argument('--evaluate', action='store_true', help='only evaluate --weights on val and exit')
    group.add_argument('--weights', default=None, help='model to evaluate with --evaluate')
    group.add_argument('--conf-thres', type=float, default=0.02, help='evaluation score threshold')
    group.add_argument('--nms-thres', type=float, default=0.4, help='evaluation NMS IoU threshold')
    group.add_argument('--test-size', type=int, default=None, help='evaluate with the short side resized to this')
    group.add_argument('--max-size', type=int, default=None, help='evaluate with the long side capped at this')
    group.add_argument('--eval-batch-size', type=int, default=1, help='val images per forward pass (padded together)')


def train_loader(args, rt: runtime.Runtime):
    """The augmented train split of --data-root in a (distributed) loader; bad data stops with one clear line."""
    try:
        train_set = WiderFaceDataset(Path(args.data_root) / 'train', transform=TrainTransform(args.image_size),
                                     verbose=rt.is_main)
    except (FileNotFoundError, LabelFormatError) as e:
        runtime.fail(str(e))
    loader = engine.make_loader(train_set, batch_size=args.batch_size, rt=rt, train=True, workers=args.workers,
                                collate_fn=detection_collate, seed=args.seed)
    if len(loader) == 0:
        runtime.fail(f'--batch-size {args.batch_size}: larger than the {len(train_set)} training images per process')
    return loader


def val_evaluator(args, rt: runtime.Runtime, arch: dict):
    """`evaluate(model, epoch=None) -> {'easy','medium','hard'}`: detect on every val image (original size unless
    --test-size / --max-size), write PRED/<event>/<name>.txt under OUT/predictions, compute the official AP.
    Returns {} (and says so) when the data root has no val split or ground truth."""
    val_dir, gt_dir, out = Path(args.data_root) / 'val', Path(args.data_root) / 'ground_truth', Path(args.out)

    def evaluate(model, epoch=None):
        if not (val_dir / 'label.txt').is_file() or not gt_dir.is_dir():
            rt.print(f'no evaluation: {val_dir}/label.txt or {gt_dir} missing')
            return {}
        detector = FaceDetector(model.eval(), arch, rt.device, conf_thres=args.conf_thres, nms_thres=args.nms_thres,
                                max_size=args.max_size, test_size=args.test_size)
        return evaluate_on_split(detector, val_dir, gt_dir, out / 'predictions', batch_size=args.eval_batch_size,
                                 workers=min(args.workers, 2), plot=out / 'pr_curves.png', log=rt.print)
    return evaluate


def evaluate_weights(args, rt: runtime.Runtime, network=None) -> dict:
    """--evaluate: rebuild --weights (from its arch, or a foreign RetinaFace state dict with `network`), evaluate it
    on val and write OUT/results.json."""
    weights = runtime.require_path(args.weights or '', '--weights', 'model file')
    try:
        model, arch = load_detector_model(weights, network, rt.device)
    except CheckpointError as e:
        runtime.fail(f'--weights: {e}')
    Path(args.out).mkdir(parents=True, exist_ok=True)
    results = val_evaluator(args, rt, arch)(model)
    engine.write_json(Path(args.out) / 'results.json', results)
    return results


def finish(args, rt: runtime.Runtime, final_row: dict) -> dict:
    """results.json with the last evaluation's Easy / Medium / Hard AP."""
    results = {k: final_row[k] for k in ('easy', 'medium', 'hard') if k in final_row}
    if rt.is_main:
        engine.write_json(Path(args.out) / 'results.json', results)
        rt.print(f'results: {results} -> {Path(args.out) / "results.json"}')
    rt.close()
    return results
