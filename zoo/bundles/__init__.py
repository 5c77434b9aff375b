"""Bundles on disk, without torch: their integrity, their names, and pretrained downloads.

* :mod:`zoo.bundles.integrity`: a bundle's identity and every file checked before use;
* :mod:`zoo.bundles.store`: what a name means (``Net``, ``Net-cifar2``, a folder);
* :mod:`zoo.bundles.hub`: declared weight sets found or downloaded, pinned;
* :mod:`zoo.bundles.weightsync`, :mod:`zoo.bundles.modeltable`: maintainer tools that
  declare shipped bundles and write the README's table of them.
"""
