"""Dependency statistics (F-statistics, mutual information) and the Dep mask built from them.

This is the public surface: `from depmicro.core.deps import ...` keeps working for every name
below. Plots (matplotlib) and the KSG estimator live in their own modules and load on use.
"""
from depmicro.core.deps.cache import (NPZ_FORMAT, cache_key, cached_dep_stats, default_cache_dir, dep_stats_from_npz,
                                      dep_stats_to_npz)
from depmicro.core.deps.fstat import f_statistics
from depmicro.core.deps.mi import bin_codes, mutual_information
from depmicro.core.deps.stats import (MI_ESTIMATORS, DepSettings, DepStats, benjamini_hochberg, compute_dep_stats,
                                      dependency_mask, order_from_metadata)

__all__ = ["MI_ESTIMATORS", "NPZ_FORMAT", "DepSettings", "DepStats", "benjamini_hochberg", "bin_codes", "cache_key",
           "cached_dep_stats", "compute_dep_stats", "default_cache_dir", "dep_stats_from_npz", "dep_stats_to_npz",
           "dependency_mask", "f_statistics", "mutual_information", "order_from_metadata"]
