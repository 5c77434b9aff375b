"""Core plugin: TensorBoard event files in ``RUN/tensorboard``, on with ``--log tensorboard``.

Per epoch: ``loss/train``, ``loss/val``, ``accuracy/train``, ``accuracy/val``, ``lr``
and ``images_per_s``; once, the hyperparameters (the resolved training config and
the model's). Written with ``torch.utils.tensorboard``, which needs the
``tensorboard`` package (``pip install 'zoo[tensorboard]'``).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from zoo.errors import TrainingError
from zoo.host.events import RunStatus, TrainingRun
from zoo.host.hookspecs import hookimpl
from zoo.spec.run import EpochMetrics, RunSummary

#: The folder of the event files inside the run directory.
TENSORBOARD_DIR = "tensorboard"
_KEY = "tensorboard"


def _hparams(run: TrainingRun) -> dict[str, Any]:
    """Scalar-valued hyperparameters, as TensorBoard's HParams plugin takes them."""
    out: dict[str, Any] = {"architecture": run.architecture, "dataset": run.data.dataset}
    items = [*run.config.model_dump(mode="json").items(),
             *(("model." + k, v) for k, v in run.model_config.hparams.items())]
    for key, value in items:
        if isinstance(value, (bool, int, float, str)):
            out[key] = value
    return out


@hookimpl
def zoo_train_start(run: TrainingRun) -> None:
    if "tensorboard" not in run.config.loggers:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainingError("--log tensorboard needs the tensorboard package; install it with "
                            "pip install 'zoo[tensorboard]' (or pip install tensorboard)"
                            ) from None
    folder = run.run_dir / TENSORBOARD_DIR
    if folder.exists() and not folder.is_dir():
        raise TrainingError(f"--log tensorboard writes into {folder}, which is a file; move it "
                            "away, or train without --log tensorboard")
    # purge_step drops events of epochs a resumed run trains again after a crash
    writer = SummaryWriter(str(folder), purge_step=len(run.history) + 1 if run.resumed else None)
    run.state[_KEY] = writer
    if not run.resumed:
        writer.add_text("run", f"{run.title}, {run.data.train_size} train / "
                               f"{run.data.val_size} val images, on {run.device}")
        _add_graph(writer, run)


def _add_graph(writer: Any, run: TrainingRun) -> None:
    """The model graph (a trace of one eval-mode forward pass on a zero batch).

    Cheap for the zoo's networks; no random number is drawn (the RNG state is forked)
    and the training flags are restored, so the run trains as it would without it.
    """
    import torch

    model = run.model
    shape = run.model_config.input_shape.as_tuple()
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.eval()
            writer.add_graph(model, torch.zeros((1, *shape), device=device))
    except Exception as exc:  # a graph is a nicety: never fail a run over it
        print(f"zoo: warning: tensorboard: no model graph ({type(exc).__name__}: {exc})",
              file=sys.stderr)
    finally:
        for module, training in modes:
            module.train(training)


def _writer(run: TrainingRun) -> Any:
    """The run's writer, or None (not logging, or given up): a folder that is no longer
    one is checked before writing, as the writer's own thread would fail on it."""
    writer = run.state.get(_KEY)
    if writer is not None and not (run.run_dir / TENSORBOARD_DIR).is_dir():
        _give_up(run, "it is no longer a folder")
        return None
    return writer


def _give_up(run: TrainingRun, why: str) -> None:
    """Stop logging to TensorBoard for the rest of the session; training goes on. The
    writer is dropped unclosed: closing would write to the folder again."""
    run.state.pop(_KEY, None)
    print(f"zoo: warning: tensorboard: cannot write {run.run_dir / TENSORBOARD_DIR} ({why}); "
          "TensorBoard logging is off for the rest of this run, which goes on",
          file=sys.stderr)


@hookimpl
def zoo_train_epoch_end(run: TrainingRun, metrics: EpochMetrics) -> None:
    writer = _writer(run)
    if writer is None:
        return
    m, step = metrics, metrics.epoch
    try:
        for tag, value in (("loss/train", m.train_loss), ("loss/val", m.val_loss),
                           ("accuracy/train", m.train_acc), ("accuracy/val", m.val_acc),
                           ("lr", m.lr), ("images_per_s", m.images_per_s)):
            writer.add_scalar(tag, value, step)
        writer.flush()
    except OSError as exc:
        _give_up(run, exc.strerror or str(exc))


@hookimpl
def zoo_train_end(run: TrainingRun, summary: RunSummary, status: RunStatus) -> None:
    writer = _writer(run)
    if writer is None:
        return
    run.state.pop(_KEY, None)
    best = summary.best
    try:
        if best is not None:
            writer.add_hparams(_hparams(run), {"hparam/best_val_acc": best.val_acc,
                                               "hparam/best_val_loss": best.val_loss},
                               run_name=".")
        writer.close()
    except OSError as exc:
        _give_up(run, exc.strerror or str(exc))
