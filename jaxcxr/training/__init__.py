"""Training: state, jitted steps, the loop, optimizer, checkpoints, sharding, run logs.

Imports `jaxcxr.models` and `jaxcxr.data`, never `jaxcxr.evaluation` or `jaxcxr.tools`.
"""
