"""Drawing boxes and landmarks on images; loss, accuracy and PR-curve plots (matplotlib, no display needed)."""
import matplotlib

matplotlib.use('Agg')  # headless: CI, servers and DataLoader workers have no display


def plot_history(rows: list[dict], path, keys=None, title: str = ''):
    """Line plot of per-epoch values (metrics.csv rows) against the epoch; `keys` defaults to every loss column."""
    import matplotlib.pyplot as plt
    if keys is None:
        keys = [k for k in rows[0] if k == 'loss' or k.startswith('loss_') or k in ('loc', 'cls', 'landm')] if rows else []
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
