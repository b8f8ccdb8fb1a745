"""Chest X-ray data: phantoms, TFDS ArrayRecord builder, Grain loaders, shared preprocessing.

`prepare(config.data) -> DatasetHandle` builds (first call) or opens the dataset; the Grain
pipelines are in `jaxcxr.data.loader` and the shared preprocessing in `jaxcxr.data.preprocess`.
"""

from jaxcxr.data.builder import DatasetHandle
from jaxcxr.data.builder import prepare

__all__ = ['DatasetHandle', 'prepare']
