"""The demo of the whole pipeline: a streaming wine classifier that embeds ``capture``.

- ``demo.model``: trains a real scikit-learn model on the wine data bundled with scikit-learn,
  writes its training data and artifact, and describes both as capture events;
- ``demo.server``: the model server (Kafka requests in, scores out, lifecycle events emitted);
- ``demo.traffic``: a bounded generator of wine-like scoring requests;
- ``demo.run``: the end-to-end driver behind ``scripts/demo.sh``.
"""
