"""Looking at trained models: ``zoo evaluate``, ``zoo inspect`` and ``zoo compare``.

* :mod:`zoo.analysis.evaluation`: accuracy and confusion on a labelled folder;
* :mod:`zoo.analysis.inspection`, :mod:`zoo.analysis.capture`: filters and feature maps;
* :mod:`zoo.analysis.filters`: the classic filters, side by side;
* :mod:`zoo.analysis.compare`: runs and bundles side by side with published references.
"""
