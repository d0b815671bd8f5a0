"""What the Lambda image ships: decoding, the predictor, the model card, API routing, event shapes,
the url input, logs and metrics, settings. Imports only the standard library, NumPy, Pillow
and ai_edge_litert (tests/test_layout.py enforces it); nothing else of busi_classifier."""
