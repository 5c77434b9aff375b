"""The shared trainer: any registered architecture on any registered dataset, on any device.

* :mod:`zoo.trainer.loop`: the loop (:func:`~zoo.trainer.loop.train`);
* :mod:`zoo.trainer.state`: a run's setup and saved state, restored on resume;
* :mod:`zoo.trainer.rundir`, :mod:`zoo.trainer.checkpoint`, :mod:`zoo.trainer.resume`: the run
  directory and its lock, checkpoints, and what a resume keeps;
* :mod:`zoo.trainer.data`, :mod:`zoo.trainer.pipeline`: the dataset on the device, batches
  and augmentation;
* :mod:`zoo.trainer.validation`, :mod:`zoo.trainer.optim`, :mod:`zoo.trainer.loss`: the
  validation pass, the optimizer and its schedule, the loss (with its gradient);
* :mod:`zoo.trainer.modelstep`: a model's own training step;
* :mod:`zoo.trainer.devices`, :mod:`zoo.trainer.distributed`, :mod:`zoo.trainer.batchsplit`,
  :mod:`zoo.trainer.allocator`: the device, DDP, parallel batch parts and memory on CPU;
* :mod:`zoo.trainer.progress`, :mod:`zoo.trainer.curves`, :mod:`zoo.trainer.interrupt`: what
  the user sees, and Ctrl-C.

Importing this package imports neither torch nor numpy (the core plugins of the training
hooks import its torch-free modules while ``zoo list`` runs): :func:`train` and the rest
load on first use.
"""

from zoo.util.deprecation import package_getattr

__getattr__, __dir__ = package_getattr(
    __name__,
    api={"train": "zoo.trainer.loop", "TrainResult": "zoo.trainer.loop",
         "TrainConfig": "zoo.spec.training"},
    moved={"select_device": "zoo.trainer.devices"})
