"""Run a face detector over a WIDER FACE split and score it with the official protocol: the evaluation of the face
detector scripts (`finetune_retinaface.py`, `train_centernet.py`, during training and with `--evaluate`), which
share its flags (`add_evaluation_flags`) and its call:

    aps = evaluate_widerface(model, arch, args, device)   # {'easy', 'medium', 'hard'} on --data-root/val
    # the same, spelled out: the reference's settings (score > 0.02, NMS 0.4, no top-k caps, original size)
    detector = FaceDetector(model, arch, device, conf_thres=0.02, nms_thres=0.4, pre_nms_top_k=None, keep_top_k=None)
    aps = evaluate_detector(detector, 'data/widerface/val', 'data/widerface/ground_truth', 'runs/retinaface')

Predictions go to OUT/predictions/<event>/<name>.txt as Pytorch_Retinaface's test_widerface.py writes them (integer
boxes), so `python -m common.evaluation.widerface --pred OUT/predictions --gt GT` gives the same numbers again.
"""
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.widerface import WiderFaceDataset
from ..inference.detectors import FaceDetector
from .widerface import evaluate, load_ground_truth, write_prediction_file


def add_evaluation_flags(group):
    """The evaluation flags of the face detector scripts, in their `run` group; the defaults are the reference's
    WIDER FACE protocol (Pytorch_Retinaface's test_widerface.py)."""
    group.add_argument('--evaluate', action='store_true', help='only evaluate --weights on val and exit')
    group.add_argument('--weights', default=None,
                       help='model to evaluate: our checkpoint, an .onnx export, or a Pytorch_Retinaface state dict')
    group.add_argument('--conf-thres', type=float, default=0.02, help='evaluation score threshold')
    group.add_argument('--nms-thres', type=float, default=0.4, help='evaluation NMS IoU threshold')
    group.add_argument('--top-k', type=int, default=None, help='cap candidates before NMS (default and 0: none)')
    group.add_argument('--keep-top-k', type=int, default=None,
                       help='cap faces per image after NMS (default and 0: none)')
    group.add_argument('--test-size', type=int, default=None, help='evaluate with the short side resized to this')
    group.add_argument('--max-size', type=int, default=None, help='evaluate with the long side capped at this')
    group.add_argument('--eval-batch-size', type=int, default=1, help='val images per forward pass (padded together)')


def evaluate_widerface(model, arch, args, device, log=print) -> dict:
    """Official WIDER FACE AP of `model` on args.data_root/val (ground truth in args.data_root/ground_truth) with the
    settings of add_evaluation_flags; predictions in args.out/predictions/<event>/<name>.txt."""
    detector = FaceDetector(model.eval(), arch, device, conf_thres=args.conf_thres, nms_thres=args.nms_thres,
                            pre_nms_top_k=args.top_k, keep_top_k=args.keep_top_k, test_size=args.test_size,
                            max_size=args.max_size)
    root = Path(args.data_root)
    return evaluate_detector(detector, root / 'val', root / 'ground_truth', args.out,
                             batch_size=args.eval_batch_size, workers=min(args.workers, 2), log=log)


def _as_pairs(batch):
    """Collate that keeps the (image, target) pairs: the images differ in size. (A module function, not a lambda:
    spawned workers on macOS and Windows must pickle it.)"""
    return batch


def evaluate_detector(detector, split_dir, gt_dir, out_dir, *, batch_size: int = 1, workers: int = 2,
                      log=print) -> dict:
    """Detect on every image of `split_dir` (label.txt + images/), write the prediction files under
    `out_dir/predictions`, plot `out_dir/pr_curves.png` and return {'easy', 'medium', 'hard'} AP. Images are read
    by DataLoader workers while the network runs. Without `split_dir/label.txt` or `gt_dir`, says so and returns {}.
    """
    split_dir, gt_dir, out_dir = Path(split_dir), Path(gt_dir), Path(out_dir)
    if not (split_dir / 'label.txt').is_file() or not gt_dir.is_dir():
        log(f'no evaluation: {split_dir / "label.txt"} or {gt_dir} missing')
        return {}
    dataset = WiderFaceDataset(split_dir, verbose=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=_as_pairs)
    predictions, started = {}, time.perf_counter()
    for batch in tqdm(loader, desc='evaluating', leave=False, mininterval=2):
        detections = detector([image for image, _ in batch])
        for (_, target), found in zip(batch, detections):
            event, name = Path(target['name']).parent.name, Path(target['name']).stem
            predictions[f'{event}/{name}'] = write_prediction_file(
                out_dir / 'predictions' / event / f'{name}.txt', name, found['boxes'], found['scores'],
                integer_boxes=True)
    seconds = time.perf_counter() - started
    result = evaluate(predictions, load_ground_truth(gt_dir))
    from ..visualize import plot_pr_curves
    plot_pr_curves(result['curves'], out_dir / 'pr_curves.png')
    aps = {k: float(result[k]) for k in ('easy', 'medium', 'hard')}
    faces = sum(len(p) for p in predictions.values())
    log(f'WIDER {split_dir.name} ({len(dataset)} images, {faces} faces written, {seconds:.1f}s): '
        f'Easy {aps["easy"]:.4f}  Medium {aps["medium"]:.4f}  Hard {aps["hard"]:.4f}')
    return aps
