"""Embedded TensorFlow Serving-compatible model server.

`python -m model_server` takes `tensorflow_model_server`'s flags and config files and serves
the same gRPC (PredictionService, ModelService) and REST (/v1/...) APIs, so clients, tests
and demos run against it exactly as against production TF Serving. It is generic: nothing
here imports the rest of the project. See docs/model_server.md (and its 'Conformance table'
for where it differs from TF Serving).
"""
