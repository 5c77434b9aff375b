"""``zoo serve``: bundles behind the Open Inference Protocol (KServe V2 REST), torch-free.

* :mod:`zoo.serve.protocol`: the protocol's messages and its JSON and binary codecs;
* :mod:`zoo.serve.batching`: the dynamic batcher (bounded queue, one onnxruntime call
  per batch);
* :mod:`zoo.serve.models` and :mod:`zoo.serve.repository`: served models (name,
  version, metadata, model card, inference) and how bundle arguments become them;
* :mod:`zoo.serve.metrics`: Prometheus metrics;
* :mod:`zoo.serve.app`: the ASGI application (endpoints, web page, errors, access log);
* :mod:`zoo.serve.server`: uvicorn, JSON-lines logs, draining on SIGTERM;
* :mod:`zoo.deploy.triton`: Triton model repositories for the same bundles.

The server modules need the ``serve`` extra (``pip install "zoo[serve]"``); importing
this package imports none of them, and nothing here imports torch.

>>> from zoo.serve.repository import load_models, parse_sources
>>> from zoo.serve.models import ServeSettings
>>> from zoo.serve.server import serve
>>> settings = ServeSettings()
>>> serve(load_models(parse_sources(["Net"]), settings), settings, port=8000)  # doctest: +SKIP
"""

from __future__ import annotations
