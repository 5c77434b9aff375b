"""Torch modules from the registry and from bundles: pretrained weights and ``zoo.load``.

* :mod:`zoo.models.pretrained`: ``create_model(name, pretrained=True)``;
* :mod:`zoo.models.load`: a bundle back into PyTorch (``zoo.load``), safely;
* :mod:`zoo.models.statedict`: state dicts read with ``weights_only=True``.
"""
