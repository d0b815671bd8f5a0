"""Breast-ultrasound classifier (normal / benign / malignant).

The package is split in two worlds:

* serving (light, what the Lambda image holds): ``config``, ``preprocessing``,
  ``inference``, ``handler``. These import only the standard library, NumPy, Pillow
  and ai-edge-litert.
* training (TensorFlow/Keras): ``dataset``, ``synthetic``, ``splitting``, ``model``,
  ``training``, ``evaluation``, ``export``, ``cli``.

This ``__init__`` imports nothing so that importing a serving module never pulls in
the training world.
"""

__version__ = "0.1.0"
