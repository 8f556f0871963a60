"""Drawing boxes and landmarks on images; loss, accuracy and PR-curve plots (matplotlib, no display needed)."""
import matplotlib

matplotlib.use('Agg')  # headless: CI, servers and DataLoader workers have no display


def plot_history(rows: list[dict], path, keys=None, title: str = ''):
    """Line plot of per-epoch values (metrics.csv rows) against the epoch; `keys` defaults to 'loss'."""
    import matplotlib.pyplot as plt
    keys = ['loss'] if keys is None else keys
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for key in keys:
        points = [(r['epoch'], r[key]) for r in rows if key in r and r[key] is not None]
        if points:
            ax.plot(*zip(*points), marker='o', markersize=3, label=key)
    ax.set_xlabel('epoch')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if keys:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _finish_unit_square(fig, ax, path, xlabel: str, ylabel: str, title: str, legend: str | None):
    """Label a plot of rates on [0, 1] x [0, 1], add the legend at `legend` (None: no legend), save, close."""
    import matplotlib.pyplot as plt
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(loc=legend)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_pr_curves(curves: dict, path, title: str = 'precision-recall'):
    """Precision-recall curves, one per entry of {name: {'precision', 'recall'[, 'ap']}}; AP in the legend.

    Fits WIDER FACE (easy / medium / hard from common.evaluation.widerface) and per-class VOC curves alike.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for name, curve in curves.items():
        recall = np.asarray(curve['recall'], dtype=float)
        precision = np.asarray(curve['precision'], dtype=float)
        shown = np.isfinite(recall) & np.isfinite(precision) & (recall > 0)  # drop thresholds with no detection
        label = f'{name} (AP {curve["ap"]:.4f})' if curve.get('ap') is not None else str(name)
        ax.plot(recall[shown], precision[shown], label=label)
    _finish_unit_square(fig, ax, path, 'recall', 'precision', title, legend='lower left' if curves else None)


def plot_roc(fpr, tpr, path, label: str = '', title: str = 'ROC'):
    """A verification ROC curve (true against false positive rate), e.g. from common.evaluation.lfw.roc_curve."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot(fpr, tpr, label=label or None)
    ax.plot([0, 1], [0, 1], color='grey', linewidth=0.8, linestyle='--')
    _finish_unit_square(fig, ax, path, 'false positive rate', 'true positive rate', title,
                        legend='lower right' if label else None)


# left eye, right eye, nose, left mouth corner, right mouth corner (BGR)
LANDMARK_COLOURS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0))


def class_colour(label: int) -> tuple:
    """A distinct BGR colour per class index (golden-angle hues), stable across images and runs."""
    import cv2
    import numpy as np
    hsv = np.array([[[int(label * 137.508) % 180, 200, 255]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def draw_detections(image, boxes, scores=None, landmarks=None, colour=(0, 255, 0), labels=None, names=None,
                    captions=None):
    """Draw detections on a copy of a BGR uint8 image: boxes (N,4) x1y1x2y2, scores (N,) as text above each box,
    landmarks (N,5,2) as five coloured dots; with `labels` (N,) class indices each box takes its class's colour and
    its text the class name from `names` (torch tensors or numpy arrays, original-image pixels); `captions` (N
    strings, such as a face's name) are written after the score."""
    import cv2
    import numpy as np

    def as_numpy(a):
        return None if a is None else np.asarray(a.detach().cpu() if hasattr(a, 'detach') else a, dtype=np.float32)

    canvas = image.copy()
    boxes, scores, landmarks = as_numpy(boxes), as_numpy(scores), as_numpy(landmarks)
    labels = None if labels is None else np.asarray(labels).astype(int).reshape(-1)
    thickness = max(1, round(max(canvas.shape[:2]) / 600))
    radius = thickness + 1
    for i, (x1, y1, x2, y2) in enumerate(np.round(boxes.reshape(-1, 4)).astype(int)):
        box_colour = colour if labels is None else class_colour(labels[i])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), box_colour, thickness)
        text = [] if labels is None else [names[labels[i]] if names is not None else str(labels[i])]
        text += [] if scores is None else [f'{scores[i]:.2f}']
        text += [] if captions is None else [captions[i]]
        if text:
            cv2.putText(canvas, ' '.join(text), (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4 * thickness, (255, 255, 255) if labels is None else box_colour, thickness, cv2.LINE_AA)
        if landmarks is not None:
            for (px, py), dot in zip(np.round(landmarks[i].reshape(5, 2)).astype(int), LANDMARK_COLOURS):
                cv2.circle(canvas, (px, py), radius, dot, -1)
    return canvas
