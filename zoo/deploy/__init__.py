"""Torch-free deployment: classify images with a bundle's ONNX graph on onnxruntime.

* :mod:`zoo.deploy.predictor`: :class:`OnnxClassifier` and its :class:`Prediction` s;
* :mod:`zoo.deploy.runtime`: onnxruntime sessions of checked graphs;
* :mod:`zoo.deploy.onnxscan`: which files a graph would read besides itself.

Importing this package or predicting never imports torch (``tests/test_layout.py``).
"""

from __future__ import annotations

from zoo.deploy.predictor import (
    DEFAULT_BATCH_SIZE,
    ClassScore,
    ImageInput,
    OnnxClassifier,
    Prediction,
    softmax,
)
from zoo.deploy.runtime import check_graph, load_graph, ort_session
from zoo.util.threads import check_threads, default_threads

__all__ = ["DEFAULT_BATCH_SIZE", "ClassScore", "ImageInput", "OnnxClassifier", "Prediction",
           "check_graph", "check_threads", "default_threads", "load_graph", "ort_session",
           "softmax"]
