"""The zoo's core plugins: the trainer's writers, early stopping and export formats.

The :class:`~zoo.registry.Registry` registers each under its short name (see
:data:`CORE_PLUGINS`); ``-p no:NAME`` blocks one. None imports torch at import time.
"""

from __future__ import annotations

#: Short name -> module of every core plugin, in registration order.
CORE_PLUGINS: dict[str, str] = {
    "metricsfiles": "zoo.builtin.metricsfiles",
    "curveplot": "zoo.builtin.curveplot",
    "progressdisplay": "zoo.builtin.progressdisplay",
    "earlystop": "zoo.builtin.earlystop",
    "tensorboard": "zoo.builtin.tensorboard",
    "formats": "zoo.builtin.formats",
}
