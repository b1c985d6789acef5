"""Offline training package: data, networks, training loop, export to ONNX, evaluation."""
