"""Breast-ultrasound classifier (normal / benign / malignant).

Two worlds, one contract:

* ``busi_classifier.serving``: everything the Lambda image ships (decoding, the predictor,
  the model card, API routing, event shapes, the url input, logs and metrics, settings).
  It imports only the standard library, NumPy, Pillow and ai-edge-litert, and nothing
  else of this package (tests/test_layout.py enforces it).
* the training world: ``config``, ``data``, ``training``, ``evaluation``, ``export``,
  ``local`` and ``cli`` (with ``console``, ``model_file`` and ``resnet50_layers`` shared
  below them). They import ``serving``, never the reverse, and run one way: config at the
  bottom, then data, training, evaluation and export (which never import training), cli
  at the top, imported by no module (tests/test_layout.py).

This ``__init__`` imports nothing, so importing the serving world never pulls in training.
"""

__version__ = "0.1.0"
