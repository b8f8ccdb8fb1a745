"""Measurement, not use: speed against torchvision (`compare`, `worker`), the loop's overhead, the
accelerator benchmark, profiles, conv probes, compiler-option A/Bs, the input pipeline, and quality
against the torch script on external films. Same layer as `jaxcxr.tools`; `launch.benchmark*` runs
them."""
