"""The shipped bundles, one directory per architecture.

This folder installs as the package ``zoo_chapter8.weights`` (see pyproject.toml),
so that the chapter-8 specs can name their weights as package resources
(``zoo_chapter8.weights:Net-cifar2``) in a wheel and in an editable checkout alike.
"""
