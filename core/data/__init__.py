"""Data sets, the held-out evaluation protocol, the synthetic generator and classical baselines.

This is the public surface of loading (`from depmicro.core.data import load_dataset` keeps
working); evaluation, synthetic data and baselines are imported from their modules.
"""
from depmicro.core.data.dataset import (TAXON_HEADERS, Dataset, align_taxa, check_same_taxa, in_taxon_order, inspect,
                                        load_dataset, load_metadata, normalize)

__all__ = ["TAXON_HEADERS", "Dataset", "align_taxa", "check_same_taxa", "in_taxon_order", "inspect", "load_dataset",
           "load_metadata", "normalize"]
