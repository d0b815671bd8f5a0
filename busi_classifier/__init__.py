"""Breast-ultrasound classifier (normal / benign / malignant).

Two worlds, one contract:

* ``busi_classifier.serving``: everything the Lambda image ships (decoding, the predictor,
  the model card, API routing, event shapes, the url input, logs and metrics, settings).
  It imports only the standard library, NumPy, Pillow and ai-edge-litert, and nothing
  else of this package (tests/test_layout.py enforces it).
* the training world: ``data``, ``training``, ``evaluation``, ``export``, ``local`` and
  ``cli``. They import ``serving``, never the reverse.

This ``__init__`` imports nothing, so importing the serving world never pulls in training.
"""

__version__ = "0.1.0"
