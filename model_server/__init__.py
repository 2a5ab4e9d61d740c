"""Embedded TensorFlow Serving-compatible model server.

`python -m model_server` takes `tensorflow_model_server`'s flags and config files and serves
the same gRPC (PredictionService, ModelService) and REST (/v1/...) APIs, so clients, tests
and demos run against it exactly as against production TF Serving. See README.md (Model server).
"""
