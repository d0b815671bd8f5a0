"""AWS Lambda entry point: `lambda_function.lambda_handler`.

The model is loaded once, when the container starts (init), from MODEL_PATH: a model
folder (model.json and the .tflite variants; its default variant is served unless
MODEL_VARIANT names another) or one .tflite file. Default: model/ beside this file (where
the Dockerfile copies it). Imports no TensorFlow: only the serving modules of
busi_classifier, NumPy, Pillow and LiteRT.
Logs are JSON lines on stdout (busi_classifier.serving.observability), LOG_LEVEL sets the level.
"""

import logging
import os
from pathlib import Path

from busi_classifier.serving import observability
from busi_classifier.serving.api import handle
from busi_classifier.serving.predictor import ModelLoadError, Predictor

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL in observability.LEVELS:  # a typo in LOG_LEVEL must not stop the function
    logging.getLogger().setLevel(LOG_LEVEL)

MODEL_PATH = os.environ.get("MODEL_PATH", str(Path(__file__).resolve().parent / "model"))

try:
    PREDICTOR = Predictor(MODEL_PATH)
    LOAD_ERROR = None
except ModelLoadError as exc:  # answer every request with a clear 503 instead of crashing init
    PREDICTOR, LOAD_ERROR = None, str(exc)
    observability.log("ERROR", "model not loaded", reason=LOAD_ERROR)


def lambda_handler(event, context):
    return handle(event, context, PREDICTOR, LOAD_ERROR)
