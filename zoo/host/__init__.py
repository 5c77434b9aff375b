"""The plugin host: the hook specifications, loading plugins, the registry of what they declare.

* :mod:`zoo.host.hookspecs`: every hook a plugin may implement (the plugin contract);
* :mod:`zoo.host.events`: what the training hooks are given;
* :mod:`zoo.host.plugins`: pluggy's manager, entry points, blocking, failures;
* :mod:`zoo.host.registry`: the :class:`Registry` of architectures, datasets, export
  formats and references, and :func:`default_registry`;
* :mod:`zoo.host.contract`: calling plugin code and checking what it returns.

The host imports no torch and no numpy at module level (``tests/test_layout.py``);
the contract checks import them when they check a plugin's model or data.
"""

from __future__ import annotations

from zoo.host.hookspecs import ENTRY_POINT_GROUP, PROJECT_NAME, hookimpl, hookspec
from zoo.host.plugins import PluginInfo
from zoo.host.registry import Registry, default_registry, reset_default_registry

__all__ = ["ENTRY_POINT_GROUP", "PROJECT_NAME", "PluginInfo", "Registry", "default_registry",
           "hookimpl", "hookspec", "reset_default_registry"]
