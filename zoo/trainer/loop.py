"""The shared trainer: any registered architecture on any registered dataset, on CPU, CUDA or MPS.

:func:`train` drives one run. The data lives on the training device
(:mod:`zoo.trainer.pipeline`), losses and accuracies accumulate there (no per-step
synchronisation), and under ``torchrun`` the same loop runs as DistributedDataParallel
(:mod:`zoo.trainer.distributed`), every rank taking its shard of the epoch's permutation.
Checkpoints (:mod:`zoo.trainer.checkpoint`) hold everything an exact resume needs: on CPU
an interrupted and resumed run ends with bitwise the same weights as an uninterrupted one.

This module is the loop: steps, validation, checkpoints, DDP. The run's setup and saved
state are :mod:`zoo.trainer.state`; everything written besides checkpoints and ``run.json``
(metrics files, curves, the progress display, TensorBoard) and early stopping are plugins
of the training hooks (:mod:`zoo.host.hookspecs`, :mod:`zoo.builtin`).
"""

from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ZooError
from zoo.host.calls import one_line
from zoo.host.events import StopRequest, TrainingRun
from zoo.host.registry import Registry, default_registry
from zoo.spec.run import BEST_CHECKPOINT, LAST_CHECKPOINT, EpochMetrics, RunSummary
from zoo.spec.training import TrainConfig, apply_recipe
from zoo.trainer.checkpoint import copy_checkpoint, save_checkpoint
from zoo.trainer.devices import configure_cpu, select_device
from zoo.trainer.distributed import (
    all_reduce,
    barrier,
    broadcast_object,
    init_process_group,
)
from zoo.trainer.interrupt import StopFlag
from zoo.trainer.loss import CrossEntropy
from zoo.trainer.pipeline import epoch_permutation, shard_indices
from zoo.trainer.resume import Position, merge_config
from zoo.trainer.rundir import record_failure
from zoo.trainer.state import RunState
from zoo.trainer.validation import validate_epoch


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns: the run directory, its summary and every epoch's metrics."""

    run_dir: Path
    summary: RunSummary
    metrics: list[EpochMetrics] = field(default_factory=list)


def train(architecture: str, config: TrainConfig | None = None, *,
          registry: Registry | None = None, **fields: Any) -> TrainResult:
    """Train ``architecture`` and return the run's directory, summary and metrics.

    ``fields`` override :class:`~zoo.spec.training.TrainConfig` fields, e.g.
    ``zoo.train("Net", dataset="synthetic", epochs=1, out=tmp_path / "run")``; the
    architecture's :class:`~zoo.spec.Recipe` changes the fields neither sets;
    ``resume=RUN_DIR`` continues a run (its saved config, updated by the
    fields given here). Bad input raises :class:`~zoo.errors.ZooError`.
    """
    registry = registry or default_registry()
    cfg, explicit = merge_config(config, fields)
    cfg = apply_recipe(cfg, explicit, registry.get_spec(architecture).recipe)
    trainer = _Trainer(architecture, cfg, registry)
    return trainer.run()


@dataclass
class _EpochTotals:
    """One epoch of training on this rank, before it is reduced over the ranks."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int
    elapsed_before: float  # seconds this epoch ran before an interruption
    started: float  # perf_counter() when this process began (or resumed) the epoch
    lr: float
    seconds: float = 0.0  # training time of this process, set when the epoch ends


class _Trainer(RunState):
    """One training run. :meth:`run` sets it up step by step (:class:`RunState`), then runs
    the epochs."""

    def run(self) -> TrainResult:
        """Pick the device, join the process group if distributed, and train."""
        cfg = self.config
        created_group = False
        device = select_device(cfg.device, self.dist.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # before NCCL, so that collectives use this GPU
        try:
            created_group = init_process_group(self.dist, device, cfg.dist_timeout_s)
            result = self._run(device)
            if created_group:
                # every rank leaves the group together: none closes its connections while
                # another may still be completing a collective over them
                barrier(self.dist)
            return result
        except BaseException as exc:
            if self.dist.enabled and not isinstance(exc, KeyboardInterrupt):
                print(f"zoo: rank {self.dist.rank}/{self.dist.world} failed: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)
            raise
        finally:
            if created_group:
                self._leave_group()
            if self.lock is not None and self.lock.held:
                self._drop_unstarted()
                self.lock.release()

    def _run(self, device: torch.device) -> TrainResult:
        self.device = device
        self.threads = configure_cpu(device, self.config, self.dist)
        wanted = self.config.channels_last
        self.channels_last = wanted if wanted is not None else device.type in ("cpu", "cuda")
        # validates the model overrides before any file or data work
        self.model_config = self._resolve_model(None)
        self._prepare_out_dir()
        self._load_data()
        self._build_model()
        self._place_data()
        self._build_optimizer()
        self.pos = self._restore() if self.resuming else Position()
        self._setup_precision()
        self._setup_split()
        try:
            self._start()
            self.stop = StopFlag(enabled=not self.dist.enabled)
            with self.stop:
                self._epochs()
        except KeyboardInterrupt:
            self.status = "interrupted"
            raise
        except BaseException as exc:
            self.failure = str(exc) if isinstance(exc, ZooError) else one_line(exc)
            raise
        finally:
            if self.splitter is not None:
                self.splitter.close()
            self._end()
        return TrainResult(run_dir=self.run_dir, summary=self._summary(len(self.pos.metrics)),
                           metrics=list(self.pos.metrics))

    def _epochs(self) -> None:
        """Train the epochs left, until the last, a stop request or Ctrl-C."""
        epochs = self.config.epochs
        if self._finished():
            why = self.stop_reason or f"{epochs} of {epochs} epochs trained"
            self._note(f"zoo: {self.run_dir} is finished ({why}); nothing was trained. To train "
                       f"longer, start a new run from its best weights: zoo train "
                       f"{self.architecture} --init-from {self.run_dir} --epochs N")
            self.status = "stopped" if self.stop_reason else "completed"
            return
        for epoch in range(self.pos.start_epoch, epochs):
            m = self._epoch_metrics(epoch, self._train_epoch(epoch))
            self._write_epoch_outputs(m)
            request = self._ask_stop(m) if epoch + 1 < epochs else None
            if request is not None:
                self.stop_reason, self.status = request.reason, "stopped"
                self._note(f"zoo: stopped after epoch {epoch + 1}: {request.reason}")
                return
            if self.stop.requested and epoch + 1 < epochs:
                self._note(f"zoo: interrupted after epoch {epoch + 1}; continue with: "
                           f"zoo train {self.architecture} --resume {self.run_dir}")
                raise KeyboardInterrupt
        self.status = "completed"

    def _finished(self) -> bool:
        """Whether the run being resumed has nothing left to train (done or stopped)."""
        return self.resuming and bool(self.stop_reason
                                      or self.pos.start_epoch >= self.config.epochs)

    def _ask_stop(self, m: EpochMetrics) -> StopRequest | None:
        """Rank 0's plugins decide whether to stop; every rank follows."""
        request = self.registry.call_hook("zoo_train_should_stop",
                                          run=self.events, metrics=m) if self.dist.main else None
        if self.dist.enabled:
            request = broadcast_object(request, self.dist)
        return request

    def _note(self, text: str) -> None:
        if self.dist.main:
            self.registry.call_hook("zoo_train_note", run=self.events, text=text)

    def _end(self) -> None:
        """Record how the session ended and tell the plugins (rank 0, once the run began)."""
        if not self.dist.main:
            return
        if self.status == "failed" and (self.started or self.created):
            record_failure(self.run_dir, self.failure or "unknown error")
        if not self.started:
            return
        if self.status != "failed":
            self._write_records(len(self.pos.metrics))
        try:
            self.registry.call_hook("zoo_train_end", run=self.events, status=self.status,
                                    summary=self._summary(len(self.pos.metrics)))
        except Exception as exc:
            if self.status == "completed" or self.status == "stopped":
                raise
            # the run's own error (or Ctrl-C) is what the user must see
            print(f"zoo: warning: {exc}", file=sys.stderr)

    def _start(self) -> None:
        """Create the run directory (a new run), tell the plugins, say what is trained."""
        dist_info, data = self.dist, self.data
        self.events = TrainingRun(
            architecture=self.architecture, config=self.config, run_dir=self.run_dir,
            model_config=self.model_config, data=self.data_info, device=str(self.device),
            world_size=dist_info.world, steps_per_epoch=self.steps, resumed=self.resuming,
            model=self.core, history=self.pos.metrics)
        if not dist_info.main:
            return
        if not self.resuming:
            self._create_run_dir(self._summary(0))
            self.created = True
        for extra in self.registry.call_hook("zoo_train_start", run=self.events)[::-1]:
            self.extras.update(extra or {})
        self.started = True
        if self.progress_note:
            self._note(self.progress_note)
        if self._resumed_state is not None:
            self._reconcile()
        if self._finished():
            return
        parts = f" (batches in {self.splitter.parts} parallel parts)" if self.splitter else ""
        self._note(f"zoo: training {self.architecture} on {data.name} ({len(data.train)} train, "
                   f"{len(data.val)} val, {len(data.classes)} classes) on {self.device}"
                   f"{f' x{dist_info.world} ranks' if dist_info.enabled else ''}{parts}"
                   f" -> {self.run_dir}")
        for skipped in data.skipped[:5]:
            self._note(f"zoo: skipped {skipped}")

    # the epoch loop ---------------------------------------------------------------------

    def _train_epoch(self, epoch: int) -> _EpochTotals:
        """One pass over this rank's share of the training data (or what remains of it)."""
        cfg, device, pos = self.config, self.device, self.pos
        self.model.train()
        perm = epoch_permutation(len(self.train_data), cfg.seed, epoch).to(device)
        self.aug_gen.manual_seed(cfg.seed * 1_000_003 + epoch * 7_919 + self.dist.rank * 31 + 5)
        totals = _EpochTotals(loss_sum=torch.zeros((), dtype=torch.float64, device=device),
                              correct=torch.zeros((), dtype=torch.int64, device=device),
                              seen=0, elapsed_before=0.0, started=0.0, lr=0.0)
        first_step = 0
        if pos.partial is not None and epoch == pos.start_epoch and pos.start_step > 0:
            totals.loss_sum += float(pos.partial["loss_sum"])
            totals.correct += int(pos.partial["correct"])
            totals.seen = int(pos.partial["seen"])
            totals.elapsed_before = float(pos.partial["elapsed"])
            self.aug_gen.set_state(pos.partial["aug_state"].cpu())
            first_step = pos.start_step
        totals.started = time.perf_counter()
        totals.lr = self.optimizer.param_groups[0]["lr"]
        if self.splitter is not None:  # the calling thread trains one part
            torch.set_num_threads(self.splitter.threads_per_part)
        try:
            self._train_steps(epoch, first_step, perm, totals)
        finally:
            if self.splitter is not None:
                torch.set_num_threads(self.threads)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        totals.seconds = time.perf_counter() - totals.started
        return totals

    def _train_steps(self, epoch: int, first_step: int, perm: torch.Tensor,
                     totals: _EpochTotals) -> None:
        cfg, device = self.config, self.device
        for step in range(first_step, self.steps):
            index = shard_indices(perm, step, cfg.batch_size, self.dist)
            xb, yb = self.train_data.batch(index, flip=cfg.flip, crop_padding=cfg.crop_padding,
                                           generator=self.aug_gen)
            loss_sum, logits = self._optimizer_step(xb, yb)
            totals.lr = self.optimizer.param_groups[0]["lr"]
            if self.scheduler is not None:
                self.scheduler.step()
            totals.loss_sum += loss_sum
            totals.correct += (logits.argmax(1) == yb).sum()
            totals.seen += int(yb.shape[0])
            if step % 50 == 49 and device.type == "cpu" and not torch.isfinite(totals.loss_sum):
                self._non_finite(epoch, step, totals.lr)
            if self.dist.main:
                self.registry.call_hook("zoo_train_step", run=self.events, epoch=epoch + 1,
                                        step=step + 1, steps=self.steps)
            if self.stop.requested and step + 1 < self.steps:
                self._interrupt_mid_epoch(epoch, step + 1, totals)

    def _optimizer_step(self, xb: torch.Tensor,
                        yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and update on one batch; its summed loss (float64) and logits."""
        cfg, optimizer, scaler = self.config, self.optimizer, self.scaler
        if self.splitter is not None:  # it sets every .grad itself
            summed = functools.partial(F.cross_entropy, reduction="sum",
                                       label_smoothing=cfg.label_smoothing)
            loss_sum, logits = self.splitter.step(self.model, self.trained_params, xb, yb, summed,
                                                  autocast=self.amp_dtype)
        else:
            optimizer.zero_grad(set_to_none=True)
            loss_fn = CrossEntropy(yb, cfg.label_smoothing)
            own = self.own_step(xb, loss_fn) if self.own_step is not None else None  # modelstep
            if own is None:
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    logits = self.model(xb)
                    loss = loss_fn(logits)
                scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            else:
                loss, logits = own
            loss_sum, logits = loss.detach().double() * int(yb.shape[0]), logits.detach()
        # a disabled scaler (anything but float16 on CUDA) passes straight through
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(self.core.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return loss_sum.double(), logits

    def _interrupt_mid_epoch(self, epoch: int, next_step: int,
                             totals: _EpochTotals) -> NoReturn:
        """Save the epoch so far (Ctrl-C, one process only) and stop the run."""
        elapsed = totals.elapsed_before + time.perf_counter() - totals.started
        part = {"loss_sum": float(totals.loss_sum), "correct": int(totals.correct),
                "seen": totals.seen, "elapsed": elapsed, "aug_state": self.aug_gen.get_state()}
        self.pos.train_seconds += time.perf_counter() - totals.started
        last = self.ckpt_dir / LAST_CHECKPOINT
        save_checkpoint(last, self._checkpoint_state(epoch, next_step, part))
        self._note(f"\nzoo: interrupted in epoch {epoch + 1} at step "
                              f"{next_step}/{self.steps}; saved {last}; continue with: "
                              f"zoo train {self.architecture} --resume {self.run_dir}")
        raise KeyboardInterrupt

    def _epoch_metrics(self, epoch: int, totals: _EpochTotals) -> EpochMetrics:
        """Evaluate, sum both over the ranks, and make the epoch's metrics."""
        device = self.device
        seen = torch.tensor(float(totals.seen), dtype=torch.float64, device=device)
        train_totals = torch.stack([totals.loss_sum, totals.correct.double(), seen])
        val_totals = validate_epoch(self.core, self.val_data,
                                    batch_size=self.config.eval_batch_size, dist_info=self.dist,
                                    amp_dtype=self.amp_dtype,
                                    num_classes=self.model_config.num_classes)
        train_time = totals.seconds
        if self.dist.enabled:
            both = all_reduce(torch.cat([train_totals, val_totals]), self.dist)
            train_totals, val_totals = both[:3], both[3:]
            timing = torch.tensor([train_time], dtype=torch.float64, device=device)
            train_time = float(all_reduce(timing, self.dist, op="max"))
        t_loss, t_correct, t_seen = (float(v) for v in train_totals.cpu())
        v_loss, v_correct, v_seen = (float(v) for v in val_totals[:3].cpu())
        k = self.model_config.num_classes
        counts = val_totals[3:].round().long().view(-1, k).tolist() if len(val_totals) > 3 else []
        self.val_confusion = tuple(tuple(row) for row in counts) or None
        if not math.isfinite(t_loss) or not math.isfinite(v_loss):
            self._non_finite(epoch, self.steps - 1, totals.lr)
        epoch_seconds = time.perf_counter() - totals.started + totals.elapsed_before
        self.pos.train_seconds += time.perf_counter() - totals.started
        return EpochMetrics(
            epoch=epoch + 1, train_loss=t_loss / max(t_seen, 1.0),
            train_acc=t_correct / max(t_seen, 1.0), val_loss=v_loss / max(v_seen, 1.0),
            val_acc=v_correct / max(v_seen, 1.0),
            images_per_s=t_seen / max(train_time + totals.elapsed_before, 1e-9),
            lr=float(totals.lr), seconds=epoch_seconds)

    def _write_epoch_outputs(self, m: EpochMetrics) -> None:
        """Record the epoch; rank 0 writes checkpoints, metrics and summary, and reports it."""
        pos = self.pos
        improved = m.val_acc > pos.best_acc
        pos.metrics.append(m)
        pos.partial = None
        pos.last_confusion = self.val_confusion
        if improved:
            pos.best_confusion = self.val_confusion
        state = self._checkpoint_state(m.epoch, 0, None)  # a collective: every rank takes part
        if self.dist.main:
            # last.pt is the run's truth, written first; best.pt (a copy when this epoch is
            # the best) and run.json follow. A crash between them is repaired on --resume.
            last = self.ckpt_dir / LAST_CHECKPOINT
            save_checkpoint(last, state)
            if improved:
                copy_checkpoint(last, self.ckpt_dir / BEST_CHECKPOINT)
            self.registry.call_hook("zoo_train_checkpoint", run=self.events, path=last,
                                    epoch=m.epoch, best=improved)
            self._write_records(m.epoch)
            self.registry.call_hook("zoo_train_epoch_end", run=self.events, metrics=m)


__all__ = ["TrainConfig", "TrainResult", "select_device", "train"]
