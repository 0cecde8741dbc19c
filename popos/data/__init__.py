"""Datasets: the registry of benchmark datasets, readers, preparation and the synthetic faces."""
