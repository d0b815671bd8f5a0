"""What the Lambda image ships: settings (the one reader of the environment), the model card
(model.json), decoding, the predictor, API routing, event shapes, the url input, logs and
metrics. Imports only the standard library, NumPy, Pillow and ai_edge_litert
(tests/test_layout.py enforces it); nothing else of busi_classifier."""
