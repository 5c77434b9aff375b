"""Compare runs and bundles side by side, as chapter 8 compares its networks (``zoo compare``).

Each source is a run directory, a bundle directory or a shipped name. Its
numbers are those of the weights it holds: a run's best epoch (what ``zoo
export`` ships by default), a bundle's exported checkpoint (its manifest's
``training.best`` or ``training.last``). The train accuracy is the trainer's,
measured during the epoch on augmented batches, not a second pass over the
training set as the book's ``validate`` makes.

A plugin may publish reference accuracies for its architectures (the
chapter-8 plugin: the book's validation accuracy) through its
``zoo_reference_accuracies`` hook; the chart marks them and the table shows the
difference. Torch-free.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from zoo.bundles.integrity import open_bundle
from zoo.bundles.store import resolve_bundle
from zoo.errors import ZooError
from zoo.host.registry import Registry, default_registry
from zoo.spec.run import SUMMARY_FILE, EpochMetrics, read_summary
from zoo.util.figures import new_figure, save_png
from zoo.util.paths import is_bare_name


class CompareRow(BaseModel):
    """One run or bundle: its accuracies and its architecture's reference accuracy."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="The run's or the bundle's folder name.")
    architecture: str
    kind: Literal["run", "bundle"]
    path: str
    epoch: int = Field(description="The epoch whose weights these are.")
    train_acc: float
    val_acc: float
    reference: float | None = Field(None, description="The published validation accuracy.")


class Comparison(BaseModel):
    """The rows of ``zoo compare`` and where their reference accuracies come from."""

    model_config = ConfigDict(frozen=True)

    rows: tuple[CompareRow, ...]
    reference_sources: dict[str, str] = Field(
        default_factory=dict, description="Architecture -> where its reference comes from.")

    def to_markdown(self) -> str:
        """The comparison as a Markdown table, with a note on the references."""
        lines = ["| model | architecture | epoch | train acc | val acc | reference val | Δ val |",
                 "|---|---|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            ref = f"{r.reference:.2f}" if r.reference is not None else "-"
            delta = f"{r.val_acc - r.reference:+.3f}" if r.reference is not None else "-"
            lines.append(f"| {r.name} | {r.architecture} | {r.epoch} | {r.train_acc:.3f} | "
                         f"{r.val_acc:.3f} | {ref} | {delta} |")
        sources = sorted(set(self.reference_sources.values()))
        if sources:
            lines += ["", "Reference: " + "; ".join(sources) + "."]
        return "\n".join(lines)


def plugin_references(registry: Registry, architectures: Sequence[str]) -> dict[str, float]:
    """The reference accuracies the architectures' plugins publish
    (``zoo_reference_accuracies``), by architecture."""
    return {arch: ref.value for arch, ref in registry.references(architectures).items()}


def _row(source: str | os.PathLike[str], registry: Registry,
         weights: str | None) -> CompareRow:
    path = Path(source)
    text = os.fspath(source)
    metrics: EpochMetrics | None
    if (path / SUMMARY_FILE).is_file():
        summary = read_summary(path)
        metrics, arch, kind = summary.best, summary.model.architecture, "run"
        if metrics is None:
            raise ZooError(f"run {text!r} has no completed epoch to compare")
    else:
        architecture = is_bare_name(source) and source in registry.list_models()
        bundle = resolve_bundle(source, registry=registry,
                                weights=weights if architecture else None)
        manifest = open_bundle(bundle)
        training = manifest.training
        if training is None:
            raise ZooError(f"bundle {text!r} was not exported from a run: it has no training "
                           "metrics to compare")
        metrics = training.exported
        if metrics is None:
            raise ZooError(f"bundle {text!r} records no metrics of its checkpoint "
                           f"{training.checkpoint}")
        path, arch, kind = bundle, manifest.architecture, "bundle"
    return CompareRow(name=path.resolve().name, architecture=arch, kind=kind,
                      path=os.fspath(path), epoch=metrics.epoch, train_acc=metrics.train_acc,
                      val_acc=metrics.val_acc)


def compare(sources: Sequence[str | os.PathLike[str]], *, registry: Registry | None = None,
            references: Mapping[str, float] | None = None,
            weights: str | None = None) -> Comparison:
    """Read each source's accuracies; ``references`` default to what the plugins publish.
    ``weights`` picks the declared weight set of every architecture named."""
    if not sources:
        raise ZooError("zoo compare needs at least one run directory, bundle or shipped name")
    registry = registry or default_registry()
    rows = [_row(s, registry, weights) for s in sources]
    archs = sorted({r.architecture for r in rows})
    published = registry.references(archs) if references is None else {}
    refs = dict(references) if references is not None else {
        arch: ref.value for arch, ref in published.items()}
    sources_text = {arch: published[arch].source if arch in published else "given"
                    for arch in archs if arch in refs}
    rows = [r.model_copy(update={"reference": refs.get(r.architecture)}) for r in rows]
    return Comparison(rows=tuple(rows), reference_sources=sources_text)


def render_comparison(comparison: Comparison, path: Path) -> int:
    """The grouped bar chart (train and val accuracy, reference marked); return the groups."""
    save_png(comparison_figure(comparison), path)
    return len(comparison.rows)


def comparison_figure(comparison: Comparison) -> Any:
    """The grouped bar chart as a matplotlib Figure, laid out: every label inside it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    rows = comparison.rows
    n = len(rows)
    fig = new_figure(max(5.0, 1.1 * n + 1.5), 4.0)
    FigureCanvasAgg(fig)  # a renderer, to measure the title
    ax = fig.add_subplot(1, 1, 1)
    width = 0.38
    xs = list(range(n))
    ax.bar([x - width / 2 for x in xs], [r.train_acc for r in rows], width, label="train",
           color="#9ecae1")
    bars = ax.bar([x + width / 2 for x in xs], [r.val_acc for r in rows], width,
                  label="validation", color="#3182bd")
    for bar, r in zip(bars, rows, strict=True):
        ax.annotate(f"{r.val_acc:.3f}", (bar.get_x() + bar.get_width() / 2, r.val_acc),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                    fontsize=7)
    marked = [(x, r.reference) for x, r in zip(xs, rows, strict=True) if r.reference is not None]
    if marked:
        ax.hlines([v for _, v in marked], [x - 0.02 for x, _ in marked],
                  [x + width + 0.02 for x, _ in marked], colors="#d62728", linewidths=2.5,
                  label="reference validation")
    values = [v for r in rows for v in (r.train_acc, r.val_acc)] + [v for _, v in marked]
    low = max(0.0, math.floor((min(values) - 0.05) * 20) / 20)
    ax.set_ylim(low, 1.0)
    ax.set_xticks(xs)
    ax.set_xticklabels([r.architecture if _unique_archs(rows) else r.name for r in rows],
                       rotation=20 if n > 4 else 0, ha="right" if n > 4 else "center",
                       fontsize=8)
    ax.set_ylabel("accuracy")
    title = "Train and validation accuracy" + (
        f" (reference: {'; '.join(sorted(set(comparison.reference_sources.values())))})"
        if comparison.reference_sources else "")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _fit_title(fig, ax, title, fontsize=8)
    fig.tight_layout()  # room for the title's lines
    return fig


def _fit_title(fig: Any, ax: Any, title: str, *, fontsize: float) -> None:
    """``title`` wrapped onto as few lines as fit the figure's width (at most 3 lines,
    then a smaller font). It is centred over the axes: it has twice the room on the
    narrower side of their centre."""
    renderer = fig.canvas.get_renderer()
    centre = ax.get_window_extent(renderer).x0 + ax.get_window_extent(renderer).width / 2
    room = 2 * min(centre, fig.bbox.width - centre) - 4
    for size in (fontsize, fontsize - 1, fontsize - 2):
        for lines in (1, 2, 3):
            text = textwrap.fill(title, width=math.ceil(len(title) / lines) + 4)
            artist = ax.set_title(text, fontsize=size)
            if artist.get_window_extent(renderer).width <= room:
                return


def _unique_archs(rows: Sequence[CompareRow]) -> bool:
    return len({r.architecture for r in rows}) == len(rows)


__all__ = ["CompareRow", "Comparison", "compare", "comparison_figure", "plugin_references",
           "render_comparison"]
