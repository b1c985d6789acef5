"""Serving side: Flask app on onnxruntime (never torch, never the training package)."""
