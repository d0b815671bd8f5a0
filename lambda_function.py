"""AWS Lambda entry point: `lambda_function.lambda_handler`. Settings come from the
environment (busi_classifier/serving/settings.py lists them); the model is loaded once, at
init, from MODEL_PATH (default: model/ beside this file, where the Dockerfile copies it)."""

from pathlib import Path

from busi_classifier.serving.api import make_handler
from busi_classifier.serving.settings import ServingSettings

lambda_handler = make_handler(ServingSettings.from_env(default_model=Path(__file__).resolve().parent / "model"))
