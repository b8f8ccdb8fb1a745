"""What a user runs on top of everything: sweeps, run comparison, accelerator-VM launch, data
exploration."""
