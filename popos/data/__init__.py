"""Datasets: the registry of benchmark datasets, readers, preparation and the synthetic faces."""

from popos.data.registry import DATASETS, DatasetSpec, Source, Split, get_dataset

__all__ = ["DATASETS", "DatasetSpec", "Source", "Split", "get_dataset"]
