"""Exporting a model folder as ONNX or TorchScript (`python -m ml.export`)."""
