"""Run a face detector over a WIDER FACE split and score it with the official protocol: the evaluation entry point
of the detector scripts (`finetune_retinaface.py`, `train_centernet.py`, during training and with `--evaluate`).

    detector = FaceDetector(model, arch, device, conf_thres=0.02, nms_thres=0.4)   # no top-k caps: the reference's
    aps = evaluate_detector(detector, 'data/widerface/val', 'data/widerface/ground_truth', 'runs/retinaface')

Predictions go to OUT/predictions/<event>/<name>.txt as Pytorch_Retinaface's test_widerface.py writes them (integer
boxes), so `python -m common.evaluation.widerface --pred OUT/predictions --gt GT` gives the same numbers again.
"""
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..datasets import WiderFaceDataset
from .widerface import evaluate, load_ground_truth, write_prediction_file


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
