"""The reference's training steps, written out plainly as Pytorch_Retinaface's train.py takes them: its WIDER FACE
loader, its `preproc` augmentation (Python `random` draws), per-image prior matching, MultiBoxLoss with 7:1 hard
negatives and plain SGD. bench/finetune_keeps_ap.py --reference runs it beside finetune_retinaface.py on the same
data and settings, so "does our finetune keep the accuracy the reference's steps keep" is measured in one run.

    python bench/reference_finetune.py --data-root ROOT --pretrained mobilenet0.25_Final.pth --out after.pth \
        [--seed S] [--epochs 1] [--batch-size 8] [--lr 1e-3] [--image-size 640]

ROOT/train holds label.txt and images/ (our layout, the reference's too). The network is ours (the reference's
layout, checked equal to it), fed what the reference feeds it: float BGR with the mean (104, 117, 123) subtracted.
Writes the finetuned state dict (the Pytorch_Retinaface layout) to --out.
"""
import argparse
import random
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.detect_speed import loop_priors  # noqa: E402
from common.checkpoint import save_checkpoint  # noqa: E402
from common.data.widerface import parse_retinaface_labels  # noqa: E402
from common.models import load_pretrained  # noqa: E402
from common.models.backbones import BGR_MEAN  # noqa: E402
from common.models.retinaface import RetinaFace  # noqa: E402

PRE_SCALES = (0.3, 0.45, 0.6, 0.8, 1.0)
INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)
VARIANCES = (0.1, 0.2)


# ------------------------------------------------------------------------------------------------ augmentation

def matrix_iof(a, b):
    """(N,4) x (M,4) corner boxes -> (N,M) intersection over the area of a's box (at least 1)."""
    lt = np.maximum(a[:, None, :2], b[:, :2])
    rb = np.minimum(a[:, None, 2:], b[:, 2:])
    inter = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)
    return inter / np.maximum(np.prod(a[:, 2:] - a[:, :2], axis=1)[:, None], 1)


def crop(image, boxes, labels, landmarks):
    """A random square of PRE_SCALES x the short side that holds at least one whole face; keeps the faces whose
    centre is inside, boxes clipped, landmarks shifted and clamped into it. After 250 refusals the whole image
    comes back with the flag that tells pad() to pad it."""
    height, width = image.shape[:2]
    for _ in range(250):
        side = int(random.choice(PRE_SCALES) * min(width, height))
        left = 0 if width == side else random.randrange(width - side)
        top = 0 if height == side else random.randrange(height - side)
        roi = np.array((left, top, left + side, top + side))
        if not (matrix_iof(boxes, roi[None]) >= 1).any():
            continue
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = np.logical_and(roi[:2] < centres, centres < roi[2:]).all(axis=1)
        boxes_t, labels_t = boxes[inside].copy(), labels[inside].copy()
        if len(boxes_t) == 0:
            continue
        boxes_t[:, :2] = np.maximum(boxes_t[:, :2], roi[:2]) - roi[:2]
        boxes_t[:, 2:] = np.minimum(boxes_t[:, 2:], roi[2:]) - roi[:2]
        landmarks_t = np.clip(landmarks[inside].reshape(-1, 5, 2) - roi[:2], 0, side).reshape(-1, 10)
        # the reference's size filter, min(w + 1, h + 1) > 0 at training scale, keeps every face
        return image[top:top + side, left:left + side], boxes_t, labels_t, landmarks_t, False
    return image, boxes, labels, landmarks, True


def convert(image, alpha=1.0, beta=0.0):
    """In place: image * alpha + beta, clipped to 0..255 and written back into the uint8 array."""
    image[:] = np.clip(image.astype(float) * alpha + beta, 0, 255)


def distort(image):
    """Brightness, contrast, saturation, hue, each with probability 1/2; contrast first or last."""
    image = image.copy()
    contrast_first = random.randrange(2)
    if random.randrange(2):
        convert(image, beta=random.uniform(-32, 32))
    if contrast_first and random.randrange(2):
        convert(image, alpha=random.uniform(0.5, 1.5))
    image = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    if random.randrange(2):
        convert(image[:, :, 1], alpha=random.uniform(0.5, 1.5))
    if random.randrange(2):
        image[:, :, 0] = (image[:, :, 0].astype(int) + random.randint(-18, 18)) % 180
    image = cv2.cvtColor(image, cv2.COLOR_HSV2BGR)
    if not contrast_first and random.randrange(2):
        convert(image, alpha=random.uniform(0.5, 1.5))
    return image


def pad(image, needed):
    if not needed:
        return image
    height, width = image.shape[:2]
    out = np.empty((max(height, width),) * 2 + (3,), image.dtype)
    out[:] = BGR_MEAN
    out[:height, :width] = image
    return out


def mirror(image, boxes, landmarks):
    if random.randrange(2):
        width = image.shape[1]
        image = image[:, ::-1]
        boxes = boxes.copy()
        boxes[:, 0::2] = width - boxes[:, 2::-2]
        landmarks = landmarks.copy().reshape(-1, 5, 2)
        landmarks[:, :, 0] = width - landmarks[:, :, 0]
        landmarks = landmarks[:, [1, 0, 2, 4, 3]].reshape(-1, 10)
    return image, boxes, landmarks


def preproc(image, targets, size):
    """(image BGR uint8, targets (N,15) boxes, landmarks, label) -> (float (3,size,size) minus the mean, targets
    with coordinates divided by the augmented image's size)."""
    boxes, landmarks, labels = targets[:, :4].copy(), targets[:, 4:14].copy(), targets[:, 14:].copy()
    image, boxes, labels, landmarks, needs_pad = crop(image, boxes, labels, landmarks)
    image = pad(distort(image), needs_pad)
    image, boxes, landmarks = mirror(image, boxes, landmarks)
    height, width = image.shape[:2]
    image = cv2.resize(image, (size, size), interpolation=INTERPOLATIONS[random.randrange(len(INTERPOLATIONS))])
    image = (image.astype(np.float32) - np.float32(BGR_MEAN)).transpose(2, 0, 1)
    boxes[:, 0::2] /= width
    boxes[:, 1::2] /= height
    landmarks[:, 0::2] /= width
    landmarks[:, 1::2] /= height
    return image, np.hstack((boxes, landmarks, labels)).astype(np.float32)


class WiderFaceDetection(torch.utils.data.Dataset):
    """label.txt + images/ -> (augmented image, targets (N,15)); faces without landmarks get -1 there and label -1."""

    def __init__(self, folder, size):
        self.folder, self.size = Path(folder), size
        self.records = parse_retinaface_labels(self.folder / 'label.txt')

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        record = self.records[index]
        image = cv2.imread(str(self.folder / 'images' / record.name))
        landmarks = np.where(record.landmark_valid[:, None], record.landmarks.reshape(-1, 10), -1)
        labels = np.where(record.landmark_valid, 1.0, -1.0)[:, None]
        # float64, as the reference's loader builds its annotations: its whole-face test (intersection over the
        # face's area >= 1) is exact only when both areas are computed in the same precision
        targets = np.hstack((record.boxes, landmarks, labels)).astype(np.float64)
        image, targets = preproc(image, targets, self.size)
        return torch.from_numpy(image), torch.from_numpy(targets)


def collate(batch):
    return torch.stack([image for image, _ in batch]), [targets for _, targets in batch]


# ------------------------------------------------------------------------------------------------ matching, loss

def point_form(priors):
    return torch.cat((priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2), 1)


def jaccard(a, b):
    inter = (torch.min(a[:, None, 2:], b[None, :, 2:]) - torch.max(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = inter[..., 0] * inter[..., 1]
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    return inter / (area_a + area_b - inter)


def match(threshold, truths, priors, labels, landmarks):
    """One image: every prior gets the face it overlaps most (label 0 below `threshold`); each face whose best prior
    overlaps it by 0.2 or more keeps that prior. Returns the encoded loc (P,4), labels (P,), landmarks (P,10)."""
    num_priors = priors.shape[0]
    overlaps = jaccard(truths, point_form(priors))
    best_prior_overlap, best_prior_idx = overlaps.max(1)
    valid = best_prior_overlap >= 0.2
    if not valid.any():
        return torch.zeros(num_priors, 4), torch.zeros(num_priors, dtype=torch.long), torch.zeros(num_priors, 10)
    best_truth_overlap, best_truth_idx = overlaps.max(0)
    best_truth_overlap.index_fill_(0, best_prior_idx[valid], 2)
    for j in range(best_prior_idx.shape[0]):  # as the reference: every face, the filtered ones too
        best_truth_idx[best_prior_idx[j]] = j
    matches = truths[best_truth_idx]
    conf = labels[best_truth_idx].long()
    conf[best_truth_overlap < threshold] = 0
    centre = ((matches[:, :2] + matches[:, 2:]) / 2 - priors[:, :2]) / (VARIANCES[0] * priors[:, 2:])
    size = torch.log((matches[:, 2:] - matches[:, :2]) / priors[:, 2:]) / VARIANCES[1]
    points = landmarks[best_truth_idx].reshape(-1, 5, 2)
    points = ((points - priors[:, None, :2]) / (VARIANCES[0] * priors[:, None, 2:])).reshape(-1, 10)
    return torch.cat([centre, size], 1), conf, points


def multibox_loss(predictions, priors, targets, threshold=0.35, neg_pos=7):
    """(loss_l, loss_c, loss_landm) as the reference computes them for a batch."""
    loc_data, conf_data, landm_data = predictions
    matched = [match(threshold, t[:, :4], priors, t[:, 14], t[:, 4:14]) for t in targets]
    loc_t, conf_t, landm_t = (torch.stack(parts) for parts in zip(*matched))

    pos1 = conf_t > 0  # faces with landmarks
    loss_landm = F.smooth_l1_loss(landm_data[pos1], landm_t[pos1], reduction='sum')
    pos = conf_t != 0
    conf_t[pos] = 1
    loss_l = F.smooth_l1_loss(loc_data[pos], loc_t[pos], reduction='sum')

    batch_conf = conf_data.reshape(-1, 2)
    loss_c = (torch.logsumexp(batch_conf, 1) - batch_conf.gather(1, conf_t.reshape(-1, 1))[:, 0]).detach()
    loss_c[pos.reshape(-1)] = 0
    loss_c = loss_c.reshape(conf_t.shape)
    _, loss_idx = loss_c.sort(1, descending=True)
    _, idx_rank = loss_idx.sort(1)
    num_pos = pos.long().sum(1, keepdim=True)
    neg = idx_rank < torch.clamp(neg_pos * num_pos, max=pos.shape[1] - 1)
    chosen = pos | neg
    loss_c = F.cross_entropy(conf_data[chosen], conf_t[chosen], reduction='sum')

    n = max(num_pos.sum().float(), 1)
    return loss_l / n, loss_c / n, loss_landm / max(pos1.sum().float(), 1)


# ------------------------------------------------------------------------------------------------ training

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-root', required=True)
    parser.add_argument('--pretrained', required=True, help='a Pytorch_Retinaface mobilenet0.25 state dict')
    parser.add_argument('--out', required=True, help='where the finetuned state dict goes')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--epochs', type=int, default=1)
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--image-size', type=int, default=640)
    parser.add_argument('--workers', type=int, default=2)
    args = parser.parse_args(argv)

    random.seed(args.seed)
    torch.manual_seed(args.seed)  # the shuffle order, and through it each loader worker's `random` seed
    dataset = WiderFaceDetection(Path(args.data_root) / 'train', args.image_size)
    loader = torch.utils.data.DataLoader(dataset, args.batch_size, shuffle=True, num_workers=args.workers,
                                         collate_fn=collate)
    model = RetinaFace('mobile0.25')
    print(load_pretrained(model, args.pretrained), flush=True)
    priors = torch.from_numpy(loop_priors(args.image_size, args.image_size))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)

    model.train()
    for epoch in range(1, args.epochs + 1):
        for step, (images, targets) in enumerate(loader, 1):
            loss_l, loss_c, loss_landm = multibox_loss(model.forward_normalized(images), priors, targets)
            loss = 2.0 * loss_l + loss_c + loss_landm
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 5 == 0 or step == len(loader):
                print(f'epoch {epoch} step {step}/{len(loader)} loc {loss_l.item():.4f} cls {loss_c.item():.4f} '
                      f'landm {loss_landm.item():.4f}', flush=True)
    save_checkpoint(model.state_dict(), args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
