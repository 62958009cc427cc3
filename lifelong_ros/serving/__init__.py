"""Serving layer: the policy's ONNX interface and PolicyRuntime (validated inference, atomic hot-swap).

onnxruntime and numpy only, never torch."""
