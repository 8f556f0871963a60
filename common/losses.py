"""Detection losses.

MultiBoxLoss (RetinaFace): smooth L1 on the encoded boxes of face priors, cross-entropy on face priors plus the
hardest background priors (7 negatives per positive, per image), smooth L1 on the landmarks of faces that have
them; loss = 2 * loc + cls + landm, each part divided by its number of positives (at least 1).

CenterNetLoss (CenterFace): penalty-reduced focal loss (or the tutorial's MSE) on the heatmap, masked smooth L1 on
offset, log size and landmarks at each face's regression cells; loss = hm + off + wh + 0.1 lm by default.

RetinaNetLoss (RetinaNet): sigmoid focal loss over the anchors that are not ignored plus smooth L1 or GIoU on the
object anchors' boxes, each divided by the number of object anchors.

SoftmaxFocalLoss (recognition): the focal loss (gamma 2) on the margin head's logits.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from .anchors import IGNORED, RETINANET_VARIANCES, MatchResult, decode_boxes
from .heatmaps import CenterTargets, gather_at


def hard_negative_mask(background_loss: torch.Tensor, positive: torch.Tensor, neg_pos_ratio: float) -> torch.Tensor:
    """(B,P) bool: per image, the `neg_pos_ratio * positives` background priors with the highest loss (at most
    P - 1). One sort over the whole batch; positives never count as negatives."""
    loss = background_loss.detach().masked_fill(positive, float('-inf'))
    order = loss.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                            .expand_as(order))
    num_neg = (neg_pos_ratio * positive.sum(1, keepdim=True)).clamp(max=positive.shape[1] - 1)
    return (rank < num_neg) & ~positive


class MultiBoxLoss(nn.Module):
    """`criterion(predictions, matched) -> (loss, {'loc', 'cls', 'landm'})`. predictions: the raw network outputs
    loc (B,P,4), class logits (B,P,2), landmarks (B,P,10); matched: the per-prior targets of common.anchors.match
    (the training script matches, so the target encoding is in plain sight there). Hard negatives: the
    `neg_pos_ratio` x positives background priors of highest loss, per image."""

    def __init__(self, num_classes: int = 2, neg_pos_ratio: float = 7, loc_weight: float = 2.0):
        super().__init__()
        self.num_classes, self.neg_pos_ratio, self.loc_weight = num_classes, neg_pos_ratio, loc_weight

    def forward(self, predictions, matched: MatchResult):
        loc_pred, conf_pred, landm_pred = predictions
        positive = matched.labels > 0
        num_pos = positive.sum().clamp(min=1).to(loc_pred.dtype)
        num_landm = matched.landmark_mask.sum().clamp(min=1).to(landm_pred.dtype)

        # boxes and landmarks: summed smooth L1 over the selected priors (indexing, so unselected rows cost nothing)
        loss_loc = F.smooth_l1_loss(loc_pred[positive], matched.loc[positive], reduction='sum') / num_pos
        landm_mask = matched.landmark_mask
        loss_landm = F.smooth_l1_loss(landm_pred[landm_mask], matched.landmarks[landm_mask],
                                      reduction='sum') / num_landm

        # classification: all positives plus the hardest negatives
        per_prior = F.cross_entropy(conf_pred.reshape(-1, self.num_classes), matched.labels.reshape(-1),
                                    reduction='none').view_as(matched.labels)
        selected = positive | hard_negative_mask(per_prior, positive, self.neg_pos_ratio)
        loss_cls = per_prior[selected].sum() / num_pos

        loss = self.loc_weight * loss_loc + loss_cls + loss_landm
        return loss, {'loc': loss_loc.detach(), 'cls': loss_cls.detach(), 'landm': loss_landm.detach()}


# ---------------------------------------------------------------------------------------------------- CenterNet


def centernet_focal_loss(logits: torch.Tensor, heatmap: torch.Tensor, alpha: float = 2.0, beta: float = 4.0):
    """CenterNet's penalty-reduced focal loss: cells where the target is exactly 1 are positives,
    -(1-p)^alpha log p; every other cell is a negative down-weighted near a face, -(1-y)^beta p^alpha log(1-p).
    Summed and divided by the number of positives (at least 1). Computed from logits (logsigmoid) in float32, so
    it stays finite under mixed precision."""
    logits, heatmap = logits.float(), heatmap.float()
    p = logits.sigmoid()
    positive = heatmap.eq(1)
    pos_loss = (1 - p).pow(alpha) * F.logsigmoid(logits)
    neg_loss = (1 - heatmap).pow(beta) * p.pow(alpha) * F.logsigmoid(-logits)
    loss = -torch.where(positive, pos_loss, neg_loss).sum()
    return loss / positive.sum().clamp(min=1)


def heatmap_mse_loss(logits: torch.Tensor, heatmap: torch.Tensor):
    """The tutorial's MSE between sigmoid(logits) and the Gaussian heatmap, summed over cells and divided by the
    number of peak cells (at least 1): a plain mean over all cells would let the background drown the few face
    cells."""
    heatmap = heatmap.float()
    squared = (logits.float().sigmoid() - heatmap).pow(2).sum()
    return squared / heatmap.eq(1).sum().clamp(min=1)


def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                     weight: torch.Tensor | None = None, beta: float = 0.1):
    """Smooth L1 averaged over EVERY element selected by `mask` (rows (N,) or elements, broadcast to pred's shape),
    whatever the target's value: zeros and negatives count like any other target. `weight` (N,) weighs the rows
    (a weighted mean); 0 when nothing is selected."""
    rows = pred.shape[0]
    mask = torch.ones(rows, dtype=torch.bool, device=pred.device) if mask is None else mask
    weight = torch.ones(rows, device=pred.device) if weight is None else weight.float()
    if mask.dim() < pred.dim():
        mask = mask.reshape(mask.shape + (1,) * (pred.dim() - mask.dim())).expand_as(pred)
    weight = weight.reshape(weight.shape + (1,) * (pred.dim() - weight.dim())).expand_as(pred)[mask]
    loss = F.smooth_l1_loss(pred.float()[mask], target.float()[mask], reduction='none', beta=beta)
    return (loss * weight).sum() / weight.sum().clamp(min=1e-6)


class CenterNetLoss(nn.Module):
    """`criterion(outputs, targets) -> (loss, {'hm', 'off', 'wh', 'lm'})` with outputs the CenterFace maps
    {'hm' logits, 'wh', 'off', 'lm'} and targets a common.heatmaps.CenterTargets. hm_loss: 'focal' (CenterNet)
    or 'mse' (the tutorial). Regression parts are masked smooth L1 at each regression sample (the face's centre cell
    and, with build_targets' reg_min < 1, its high-Gaussian neighbours, weighted), landmarks only for faces that
    have them; each face weighs the same, whatever its number of samples. beta 0.1 because offsets and normalised
    landmarks live within about +-1, where beta 1 would make the loss purely quadratic."""

    def __init__(self, hm_loss: str = 'focal', hm_weight: float = 1.0, off_weight: float = 1.0,
                 wh_weight: float = 1.0, lm_weight: float = 0.1, beta: float = 0.1):
        super().__init__()
        if hm_loss not in ('focal', 'mse'):
            raise ValueError(f'hm_loss must be "focal" or "mse", got {hm_loss!r}')
        self.hm_loss = centernet_focal_loss if hm_loss == 'focal' else heatmap_mse_loss
        self.weights = {'hm': hm_weight, 'off': off_weight, 'wh': wh_weight, 'lm': lm_weight}
        self.beta = beta

    def forward(self, outputs: dict, targets: CenterTargets):
        t = targets

        def regression(name, target, mask=None):
            return masked_smooth_l1(gather_at(outputs[name], t.image, t.cell), target, mask, t.weight, self.beta)

        parts = {'hm': self.hm_loss(outputs['hm'], t.heatmap),
                 'off': regression('off', t.offset), 'wh': regression('wh', t.size),
                 'lm': regression('lm', t.landmarks, t.landmark_mask)}
        loss = sum(self.weights[k] * v for k, v in parts.items())
        return loss, {k: v.detach() for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------------- recognition


class SoftmaxFocalLoss(nn.Module):
    """The recognition tutorial's focal loss on margin-head logits: with ce the per-sample cross-entropy and
    p = exp(-ce) the probability of the true identity, the mean of (1 - p)^gamma * ce. gamma 0 is cross-entropy;
    gamma 2 (the tutorial's) down-weighs identities the network already gets right. Computed in float32."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), labels, reduction='none')
        return ((1 - torch.exp(-ce)) ** self.gamma * ce).mean()


# ---------------------------------------------------------------------------------------------------- RetinaNet


class RetinaNetLoss(nn.Module):
    """`criterion((cls_logits (B,A,K), box_offsets (B,A,4)), targets, anchors) -> (loss, {'cls', 'box'})` with
    targets the common.anchors.match_anchors AnchorTargets of the batch.

    cls: sigmoid focal loss (torchvision.ops.sigmoid_focal_loss, alpha 0.25, gamma 2) over every anchor that is not
    ignored, one-hot on the object anchors' classes, summed and divided by the number of object anchors (at least
    1), as the paper normalises. box: smooth L1 on the encoded offsets of object anchors ('smooth_l1', beta
    `beta`: Detectron's 1/9 for the paper's unscaled encoding), or the GIoU loss of the boxes decoded with
    `variances` against their objects ('giou'), divided by the same count. loss = cls + box_weight * box.
    Computed in float32 (stable under mixed precision)."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, box_loss: str = 'smooth_l1', box_weight: float = 1.0,
                 beta: float = 1 / 9, variances=RETINANET_VARIANCES):
        super().__init__()
        if box_loss not in ('smooth_l1', 'giou'):
            raise ValueError(f'box_loss must be "smooth_l1" or "giou", got {box_loss!r}')
        self.alpha, self.gamma, self.box_loss, self.box_weight, self.beta = alpha, gamma, box_loss, box_weight, beta
        self.variances = variances

    def forward(self, predictions, targets, anchors):
        cls_logits, box_offsets = (p.float() for p in predictions)
        positive = targets.labels >= 0
        counted = targets.labels != IGNORED                               # between the IoU thresholds: no loss
        num_pos = positive.sum().clamp(min=1).float()
        one_hot = torch.zeros_like(cls_logits)
        one_hot[positive] = F.one_hot(targets.labels[positive], cls_logits.shape[-1]).float()
        loss_cls = sigmoid_focal_loss(cls_logits[counted], one_hot[counted], self.alpha, self.gamma,
                                      reduction='sum') / num_pos
        if self.box_loss == 'giou':
            anchors = anchors.expand(box_offsets.shape[0], -1, -1)[positive]
            decoded = decode_boxes(box_offsets[positive], anchors, self.variances)
            loss_box = generalized_box_iou_loss(decoded, targets.boxes[positive], reduction='sum') / num_pos
        else:
            loss_box = F.smooth_l1_loss(box_offsets[positive], targets.loc[positive], reduction='sum',
                                        beta=self.beta) / num_pos
        loss = loss_cls + self.box_weight * loss_box
        return loss, {'cls': loss_cls.detach(), 'box': loss_box.detach()}
