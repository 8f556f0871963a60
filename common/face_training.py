"""What the WIDER FACE detector scripts (finetune_retinaface.py, train_centernet.py) share around their own network
and loss: the network set-up with --pretrained, the train split and its loader, the optimiser and LR-schedule flags,
the evaluation flags, the val evaluation run during training, the `--evaluate --weights W` mode and results.json.

`--data-root` holds train/ and val/ (label.txt + images/) and ground_truth/ (the official .mat files).
"""
from pathlib import Path

from . import engine, runtime
from .checkpoint import CheckpointError
from .datasets import LabelFormatError, WiderFaceDataset, detection_collate
from .detector import FaceDetector, load_detector_model
from .evaluation.widerface import evaluate_on_split
from .models import build_model, load_pretrained
from .transforms import TrainTransform


def add_evaluation_flags(group):
    group.add_argument('--evaluate', action='store_true', help='only evaluate --weights on val and exit')
    group.add_argument('--weights', default=None, help='model to evaluate with --evaluate')
    group.add_argument('--conf-thres', type=float, default=0.02, help='evaluation score threshold')
    group.add_argument('--nms-thres', type=float, default=0.4, help='evaluation NMS IoU threshold')
    group.add_argument('--test-size', type=int, default=None, help='evaluate with the short side resized to this')
    group.add_argument('--max-size', type=int, default=None, help='evaluate with the long side capped at this')
    group.add_argument('--eval-batch-size', type=int, default=1, help='val images per forward pass (padded together)')


def network(args, rt: runtime.Runtime, arch: dict):
    """The network of `arch`, filled from --pretrained (unless --resume, which restores it later) and wrapped for the
    runtime (device, channels_last, DDP); a file that does not fit stops with one line."""
    model = build_model(arch)
    if args.pretrained and not args.resume:
        try:
            rt.print(load_pretrained(model, runtime.require_path(args.pretrained, '--pretrained', 'weights file')))
        except CheckpointError as e:
            runtime.fail(f'--pretrained: {e}')
    return rt.wrap(model)


def train_loader(args, rt: runtime.Runtime, transform=None):
    """The train split of --data-root in a (distributed) loader, augmented by `transform` (default: the RetinaFace
    recipe at --image-size); bad data stops with one clear line."""
    transform = transform or TrainTransform(args.image_size)
    try:
        train_set = WiderFaceDataset(Path(args.data_root) / 'train', transform=transform, verbose=rt.is_main)
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


def add_optimisation_flags(group, *, optimizer: str, weight_decay: float, warmup_epochs: float, default_steps):
    """The optimiser and LR-schedule flags that optimizer_and_scheduler reads, with the script's defaults."""
    group.add_argument('--optimizer', default=optimizer, choices=['sgd', 'adam', 'adamw'])
    group.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    group.add_argument('--weight-decay', type=float, default=weight_decay)
    group.add_argument('--warmup-epochs', type=float, default=warmup_epochs, help='linear LR warm-up from 0')
    percent = ' and '.join(f'{round(100 * f)}%%' for f in default_steps)
    group.add_argument('--lr-steps', type=float, nargs='*', default=None,
                       help=f'epochs where the LR drops x0.1 (default: {percent} of --epochs; none: no drop)')
    group.add_argument('--schedule', default='step', choices=['step', 'cosine', 'constant'],
                       help='after the warm-up: step drops at --lr-steps, cosine to 0, or constant')
    group.set_defaults(default_lr_steps=list(default_steps))


def optimizer_and_scheduler(model, args, iters_per_epoch: int):
    """--optimizer over the model, and an LR schedule stepped every iteration: --warmup-epochs of linear warm-up, then
    --schedule: 'step' (x0.1 at each of --lr-steps, by default the script's fractions of --epochs), 'cosine' or
    'constant'."""
    optimizer = engine.build_optimizer(model, args.optimizer, args.lr, args.momentum, args.weight_decay)
    lr_steps = args.lr_steps if args.lr_steps is not None else [round(args.epochs * f) for f in args.default_lr_steps]
    scheduler = engine.build_scheduler(optimizer, iters_per_epoch=iters_per_epoch, epochs=args.epochs,
                                       warmup_epochs=args.warmup_epochs, schedule=args.schedule,
                                       milestones=lr_steps, gamma=0.1, per='epoch')
    return optimizer, scheduler


def fit(args, rt: runtime.Runtime, *, model, arch: dict, train_loader, loss_fn, optimizer, scheduler, loss_keys,
        grad_clip: float = 0.0) -> dict:
    """engine.fit with the WIDER FACE evaluation (best.pt by Easy AP), then results.json; returns Easy/Medium/Hard."""
    final = engine.fit(rt=rt, model=model, train_loader=train_loader, loss_fn=loss_fn, optimizer=optimizer,
                       scheduler=scheduler, scaler=rt.grad_scaler(), arch=arch, args=args,
                       evaluate=val_evaluator(args, rt, arch), best_key='easy', loss_keys=loss_keys,
                       metric_keys=['easy', 'medium', 'hard'], grad_clip=grad_clip)
    return finish(args, rt, final)


def finish(args, rt: runtime.Runtime, final_row: dict) -> dict:
    """results.json with the last evaluation's Easy / Medium / Hard AP."""
    results = {k: final_row[k] for k in ('easy', 'medium', 'hard') if k in final_row}
    if rt.is_main:
        engine.write_json(Path(args.out) / 'results.json', results)
        rt.print(f'results: {results} -> {Path(args.out) / "results.json"}')
    rt.close()
    return results
