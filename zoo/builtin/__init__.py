"""The zoo's core plugins: the trainer's writers, early stopping and the export formats.

Each is a plugin of the same hooks a third party implements (:mod:`zoo.host.hookspecs`),
registered by every :class:`~zoo.host.registry.Registry` under its short name
(:data:`zoo.host.plugins.CORE_PLUGINS`, which names them as strings: nothing imports
this package). ``-p no:NAME`` blocks one, but ``formats``, which every bundle needs.
None imports torch at import time.
"""
