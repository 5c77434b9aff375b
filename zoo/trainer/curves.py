"""A run's training curves (``curves.png``): loss, accuracy and learning rate per epoch.

The run is named in the title, the best epoch (highest validation accuracy,
the first one on a tie: the epoch ``best.pt`` holds) is marked on every panel,
and epochs are whole numbers on the axis. matplotlib is a required dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zoo.spec.run import CURVES_PNG, EpochMetrics
from zoo.util.figures import new_figure, save_png

#: Panels of the figure: loss, accuracy, learning rate.
PANELS = 3


def best_epoch(metrics: Sequence[EpochMetrics]) -> EpochMetrics:
    """The epoch with the highest validation accuracy, the first one on a tie."""
    return max(metrics, key=lambda m: m.val_acc)


def draw_curves(metrics: Sequence[EpochMetrics], path: Path, title: str) -> int:
    """Draw ``metrics`` to ``path`` (atomically); return the number of panels."""
    from matplotlib.ticker import MaxNLocator

    if not metrics:
        raise ValueError("no epochs to draw")
    epochs = [m.epoch for m in metrics]
    best = best_epoch(metrics)
    fig = new_figure(13.0, 3.8)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, PANELS)
    ax_loss.plot(epochs, [m.train_loss for m in metrics], "o-", ms=3, label="train")
    ax_loss.plot(epochs, [m.val_loss for m in metrics], "o-", ms=3, label="validation")
    ax_loss.set_ylabel("loss")
    ax_acc.plot(epochs, [m.train_acc for m in metrics], "o-", ms=3, label="train")
    ax_acc.plot(epochs, [m.val_acc for m in metrics], "o-", ms=3, label="validation")
    ax_acc.plot([best.epoch], [best.val_acc], "*", ms=12, color="#d62728",
                label=f"best: {best.val_acc:.3f} (epoch {best.epoch})")
    ax_acc.set_ylabel("accuracy")
    lrs = [m.lr for m in metrics]
    ax_lr.plot(epochs, lrs, "o-", ms=3, color="#555555")
    ax_lr.set_ylabel("learning rate (end of epoch)")
    if min(lrs) > 0 and max(lrs) / min(lrs) > 50:
        ax_lr.set_yscale("log")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.axvline(best.epoch, color="#d62728", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    return PANELS


def write_curves(run_dir: Path, metrics: list[EpochMetrics], title: str) -> bool:
    """Draw ``run_dir/curves.png``, titled with the run's folder name; False if no epoch ran."""
    if not metrics:
        return False
    draw_curves(metrics, Path(run_dir) / CURVES_PNG, f"{Path(run_dir).name}: {title}")
    return True


__all__ = ["PANELS", "best_epoch", "draw_curves", "write_curves"]
