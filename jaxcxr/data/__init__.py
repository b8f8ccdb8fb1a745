"""Chest X-ray data: phantoms, TFDS ArrayRecord builder, Grain loaders, shared preprocessing."""
