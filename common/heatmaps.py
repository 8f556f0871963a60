"""CenterNet-style targets and decoding for CenterFace (one class: face), batched tensor code on the device.

The encoding, in the output grid of stride `down` (4): a face with box (x1, y1, x2, y2) in input pixels has
    centre   c = ((x1 + x2) / 2, (y1 + y2) / 2) / down       (grid units)
    cell     (i, j) = floor(c)                               (clamped into the grid)
and the network is trained to output, at that one cell:
    'hm'   a Gaussian peak of 1 at the cell, exp(-(dx^2 + dy^2) / (2 sigma^2)) around it, max-combined over faces;
           sigma = (2 r + 1) / 6 with CenterNet's size-adaptive radius r (a box whose corners move by r keeps
           IoU >= 0.7 with the true one), or a fixed sigma (grid cells) when one is given
    'off'  c - cell, the sub-cell centre offset in [0, 1) (x, y)
    'wh'   log(w / down), log(h / down) with w = x2 - x1, h = y2 - y1 in input pixels
    'lm'   ((lx_k - x1) / w, (ly_k - y1) / h) for k = 1..5: each landmark relative to the box's top-left corner in
           units of the box size, ordered lx1, ly1, .., lx5, ly5
The released CenterFace model encodes the same quantities in another order and origin: sizes (h, w), offsets (y, x)
from the cell's centre (their centre is (cell + offset + 0.5) * down), landmarks (y, x). common.models.convert moves
their heads into this encoding, and tests/test_detect_onnx.py checks the result against the authors' pipeline.
Faces without landmarks train boxes only (`landmark_mask`). Regression targets are kept per sample, not as dense
maps: the loss gathers the predictions at each sample's cell. Besides the centre cell, the cells near it where the
face's Gaussian is high also regress the face (`reg_min`, weighted by the Gaussian, each face's weights summing to
1), with 'off' = c - cell there; this gives large faces many box samples per step instead of one. With `pos_min`
those cells are heatmap peaks (1) as well: any of them may fire for the face, since each decodes to its box.

Decoding inverts it: peaks of the sigmoid heatmap (equal to their 3x3 max-pool; every cell for the released model,
as its authors decode it), the top-K per image, and for each
centre = (cell + off) * down, size = exp(wh) * down, landmark = centre - size / 2 + lm * size; NMS and the score
threshold follow in common.inference.nms. `start_inside_image` is the released decoder's rule for boxes that cross the
image's left or top edge.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CenterTargets:
    """Training targets for a batch: a dense heatmap plus one row per regression sample, i.e. per (face, cell)
    pair that regresses the face (all images concatenated); with reg_min=1 exactly one row per face."""
    heatmap: torch.Tensor        # (B,1,H,W) float, peak 1 at each face's cell
    image: torch.Tensor          # (S,) long, which image the sample is in
    cell: torch.Tensor           # (S,) long, y * W + x of the sample's cell
    offset: torch.Tensor         # (S,2) float, face centre - cell (x, y); in [0, 1) at the centre cell
    size: torch.Tensor           # (S,2) float, log(w / down), log(h / down)
    landmarks: torch.Tensor      # (S,10) float, (l - top-left corner) / (w, h), ordered x1, y1, .., x5, y5
    landmark_mask: torch.Tensor  # (S,) bool, True where the face has landmarks
    weight: torch.Tensor         # (S,) float, Gaussian value of the cell, normalised to sum 1 over each face
    num_faces: int = 0


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """CenterNet's radius r for boxes of the given sizes (grid units): the smallest of the three cases of corners
    moved by r (both inwards, both outwards, one of each) that keep IoU >= min_overlap, each solved as a quadratic.
    The /2 in every root (not /2a) is CenterNet's, kept because its heatmaps were tuned with it."""
    area, total = height * width, height + width
    m = min_overlap
    b1, c1 = total, area * (1 - m) / (1 + m)
    r1 = (b1 + torch.sqrt((b1 ** 2 - 4 * c1).clamp(min=0))) / 2
    a2, b2, c2 = 4, 2 * total, (1 - m) * area
    r2 = (b2 + torch.sqrt((b2 ** 2 - 4 * a2 * c2).clamp(min=0))) / 2
    a3, b3, c3 = 4 * m, -2 * m * total, (m - 1) * area
    r3 = (b3 + torch.sqrt((b3 ** 2 - 4 * a3 * c3).clamp(min=0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def gaussian_windows(image, cx, cy, radius, sigma, grid_hw):
    """Every (face, cell, value) of the faces' Gaussian windows, clipped to the grid: face index (N,), flat cell
    index into B*H*W (N,), Gaussian value (N,). Each face's (2r+1)^2 window is made at once by broadcasting;
    faces are grouped by window size (radius up to 1, 3, 7, 15, ...) so that a few large faces do not make every
    small face allocate a large window: a handful of groups, never a loop over faces."""
    height, width = grid_hw
    faces, cells, values = [], [], []
    group = torch.ceil(torch.log2(radius.float() + 1)).long()  # radius 0 -> 0, 1 -> 1, 2..3 -> 2, 4..7 -> 3, ...
    for g in group.unique().tolist():
        sel = torch.nonzero(group == g).squeeze(1)
        reach = min(2 ** g - 1, max(height, width))
        d = torch.arange(-reach, reach + 1, device=image.device)
        dx, dy = d[None, None, :], d[None, :, None]
        x, y = cx[sel, None, None] + dx, cy[sel, None, None] + dy         # (n,1,D), (n,D,1)
        r, s = radius[sel, None, None], sigma[sel, None, None]
        value = torch.exp(-(dx ** 2 + dy ** 2) / (2 * s * s))             # (n,D,D)
        keep = (dx.abs() <= r) & (dy.abs() <= r) & (x >= 0) & (x < width) & (y >= 0) & (y < height)
        faces.append(sel[:, None, None].expand_as(keep)[keep])
        cells.append(((image[sel, None, None] * height + y) * width + x)[keep])
        values.append(value.expand_as(keep)[keep])
    if not faces:
        empty = torch.zeros(0, dtype=torch.long, device=image.device)
        return empty, empty, torch.zeros(0, device=image.device)
    return torch.cat(faces), torch.cat(cells), torch.cat(values)


def build_targets(targets: list[dict], grid_hw, down: int = 4, sigma: float | None = None,
                  min_overlap: float = 0.7, reg_min: float = 0.5, pos_min: float = 1.0) -> CenterTargets:
    """CenterTargets for a batch. `targets` are the per-image dicts of detection_collate (tensors on the device the
    targets should live on): 'boxes' (N,4) x1y1x2y2 and 'landmarks' (N,5,2) in input pixels, 'landmark_valid'
    (N,). `grid_hw` is the output map size (H/down rounded up). `sigma` None: size-adaptive Gaussians; a number:
    that fixed sigma in grid cells for every face (window radius 3 sigma).

    `reg_min`: besides the centre cell, every cell where the face's Gaussian is >= reg_min (and no other face's
    is higher) regresses the face too, weighted by that value (TTFNet's idea: many more box samples per face, so
    large faces learn their size in far fewer steps). The offset there is the face centre minus the cell, so
    decoding at any of them gives the same box. reg_min=1 regresses at the centre cell only (CenterNet).

    `pos_min` < 1: the regression cells where the Gaussian is >= pos_min become heatmap peaks (1) too, so a large
    face teaches "face here" at several cells instead of asking for its exact centre cell; their boxes decode to the
    same face, and NMS keeps one. pos_min=1: one peak per face (CenterNet)."""
    height, width = int(grid_hw[0]), int(grid_hw[1])
    device = targets[0]['boxes'].device if targets else torch.device('cpu')
    boxes = torch.cat([t['boxes'].reshape(-1, 4).float() for t in targets]).to(device)
    landmarks = torch.cat([t['landmarks'].reshape(-1, 5, 2).float() for t in targets]).to(device)
    valid = torch.cat([t['landmark_valid'].reshape(-1).bool() for t in targets]).to(device)
    counts = torch.tensor([len(t['boxes']) for t in targets], device=device)
    image = torch.repeat_interleave(torch.arange(len(targets), device=device), counts)

    size_px = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0.5)               # (F,2) w, h; guards log(0)
    centre_px = (boxes[:, :2] + boxes[:, 2:]) / 2
    centre = centre_px / down
    limit = torch.tensor([width - 1, height - 1], device=device)
    cell_xy = torch.minimum(centre.floor().long().clamp(min=0), limit)   # centres on the far edge stay inside

    size_grid = size_px / down
    if sigma is None:
        radius = gaussian_radius(size_grid[:, 1], size_grid[:, 0], min_overlap).floor().clamp(min=0).long()
        sigmas = (2 * radius + 1).float() / 6
    else:
        radius = torch.full_like(image, math.ceil(3 * sigma))
        sigmas = torch.full_like(size_grid[:, 0], float(sigma))
    face, flat, value = gaussian_windows(image, cell_xy[:, 0], cell_xy[:, 1], radius, sigmas, (height, width))
    heatmap = torch.zeros(len(targets) * height * width, device=device)
    heatmap.scatter_reduce_(0, flat, value, reduce='amax')

    # regression samples: the centre cell (value 1) and cells of high value that no other face claims more
    sample = (value >= min(reg_min, 1.0)) & (value >= heatmap[flat])
    if pos_min < 1:
        heatmap[flat[sample & (value >= pos_min)]] = 1.0
    face, flat, value = face[sample], flat[sample], value[sample]
    order = torch.argsort(face * heatmap.numel() + flat)                 # rows in face order, then cell order
    face, flat, value = face[order], flat[order], value[order]
    weight = value / torch.zeros(len(boxes), device=device).index_add_(0, face, value)[face]
    cell = flat % (height * width)
    xy = torch.stack([cell % width, cell // width], dim=1)

    relative = (landmarks - boxes[:, None, :2]) / size_px[:, None, :]
    relative = torch.where(valid[:, None, None], relative, torch.zeros_like(relative)).reshape(-1, 10)
    return CenterTargets(heatmap=heatmap.view(len(targets), 1, height, width), image=flat // (height * width),
                         cell=cell, offset=centre[face] - xy, size=torch.log(size_grid)[face],
                         landmarks=relative[face], landmark_mask=valid[face], weight=weight, num_faces=len(boxes))


def gather_at(maps: torch.Tensor, image: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) maps -> (S,C) values at each sample's (image, cell), without copying the whole map."""
    return maps.flatten(2)[image, :, cell]


def decode_centerface(outputs: dict, input_hw, down: int | None = None, top_k: int | None = 1000,
                      peaks_only: bool = True):
    """CenterFace outputs {'hm' logits, 'wh', 'off', 'lm'} for a batch whose input was (H, W) -> boxes (B,K,4)
    x1y1x2y2, scores (B,K), landmarks (B,K,5,2) in input pixels, K = min(top_k, cells) (None: all): the K strongest
    heatmap peaks (cells equal to their 3x3 max-pool) per image, strongest first. Non-peak cells have score 0, so
    the score threshold of common.inference.nms.postprocess drops them. `peaks_only=False` keeps every cell (the
    released model's decoder: NMS alone merges the neighbours). `down` defaults to the input / map size ratio."""
    heat = outputs['hm'].float().sigmoid()
    batch, _, height, width = heat.shape
    if down is None:
        down = 2 ** round(math.log2(int(input_hw[1]) / width))
    peaks = heat * (heat == F.max_pool2d(heat, 3, stride=1, padding=1)) if peaks_only else heat
    scores, cell = peaks.view(batch, -1).topk(min(top_k or height * width, height * width), dim=1)  # (B,K)

    def at_peaks(name):  # (B,C,H,W) -> (B,K,C)
        maps = outputs[name].float().flatten(2)
        return maps.gather(2, cell[:, None, :].expand(-1, maps.shape[1], -1)).transpose(1, 2)

    xy = torch.stack([cell % width, cell // width], dim=-1).float()
    centre = (xy + at_peaks('off')) * down
    size = torch.exp(at_peaks('wh').clamp(-10, 10)) * down             # clamp: no inf from an untrained net
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
    landmarks = boxes[:, :, None, :2] + at_peaks('lm').view(batch, -1, 5, 2) * size[:, :, None, :]
    return boxes, scores, landmarks


def start_inside_image(boxes: torch.Tensor, landmarks: torch.Tensor, image_hw: list) -> tuple:
    """The released CenterFace decoder's rule at the image border, batched: a box's top-left corner is clamped into
    the image and the box keeps its size from there (cut only by the right / bottom edge), its landmarks moving with
    the corner. boxes (B,K,4) and landmarks (B,K,5,2) in image pixels; image_hw one (height, width) per image."""
    limit = torch.tensor([[w, h] for h, w in image_hw], dtype=boxes.dtype, device=boxes.device)[:, None, :]
    corner = torch.minimum(boxes[..., :2].clamp(min=0), limit)
    size = boxes[..., 2:] - boxes[..., :2]
    shift = corner - boxes[..., :2]
    return torch.cat([corner, torch.minimum(corner + size, limit)], dim=-1), landmarks + shift[:, :, None, :]
