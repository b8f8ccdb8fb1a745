"""Tools on top of everything: sweeps, run comparison, accelerator-VM launch, benchmarks, exploration."""
