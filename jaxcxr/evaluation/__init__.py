"""Evaluation: metrics, reports and figures, Grad-CAM, batched inference, ONNX / leaderboard export.

Imports `jaxcxr.training`, `jaxcxr.models` and `jaxcxr.data`, never `jaxcxr.tools`.
"""
