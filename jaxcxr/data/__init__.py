"""Chest X-ray data: phantoms, TFDS ArrayRecord builder, Grain loaders, shared preprocessing.

`prepare(config.data) -> DatasetHandle` (`jaxcxr.data.dataset`) builds (first call, with the TFDS
builder of `jaxcxr.data.builder` over a Kaggle-layout folder, `jaxcxr.data.folders`) or opens the
dataset; the Grain
pipelines are in `jaxcxr.data.loader` and the shared preprocessing in `jaxcxr.data.preprocess`.
"""

from jaxcxr.data.dataset import DatasetHandle, prepare

__all__ = ['DatasetHandle', 'prepare']
