"""Sweeps declared beside the configs: each file has `get_config(arg)` and
`get_hyper(hyper[, arg])`.

Run one with `python -m launch.sweep --config configs/sweeps/<name>.py[:arg] --workdir DIR` and
compare its trials with `python -m launch.compare --workdir DIR` (see jaxcxr/tools/sweep.py).
"""
