"""BIOM tables (the Biological Observation Matrix: what kraken-biom, QIIME and most microbiome pipelines
write), read without the `biom-format` package: version 2.x is HDF5 (h5py, already here through
anndata), version 1.0 is JSON. Observations are taxa, columns are samples; the result is the
samples x taxa matrix and names that every other reader hands to `dataset._validated`.

Format: https://biom-format.org/documentation/format_versions/biom-2.1.html and biom-1.0.html.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from depmicro.core.errors import DepmicroError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# what this reader uses of a BIOM 2 file: sample/matrix is the samples x observations matrix in CSR
# (the spec's sample-major copy beside observation/matrix)
HDF5_KEYS = ("observation/ids", "sample/ids", "sample/matrix/data", "sample/matrix/indices", "sample/matrix/indptr")


def read_biom(p: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """(counts (samples x taxa, float64), sample ids, taxon ids) of a BIOM 2.x or 1.0 file."""
    return _read_hdf5(p) if _is_hdf5(p) else _read_json(p)


def check_biom(p: Path) -> None:
    """The cheap check a study runs before Ray starts: the file opens as BIOM and has what read_biom reads."""
    if not _is_hdf5(p):
        _read_json(p)  # JSON has no cheaper partial read
        return
    with _open_hdf5(p):
        pass


def _is_hdf5(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE


@contextmanager
def _open_hdf5(p: Path):
    import h5py

    try:
        with h5py.File(p, "r") as f:
            missing = [k for k in HDF5_KEYS if k not in f]
            if missing:
                raise DepmicroError(f"{p}: not a BIOM 2 table (no {missing[0]})")
            yield f
    except OSError as exc:
        raise DepmicroError(f"{p}: not a readable BIOM (HDF5) file ({_first(exc)})") from None


def _first(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _names(ds) -> list[str]:
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in ds[()]]


def _read_hdf5(p: Path) -> tuple[np.ndarray, list[str], list[str]]:
    with _open_hdf5(p) as f:
        taxa, samples = _names(f["observation/ids"]), _names(f["sample/ids"])
        data = np.asarray(f["sample/matrix/data"][()], dtype=np.float64)
        indices = np.asarray(f["sample/matrix/indices"][()], dtype=np.int64)
        indptr = np.asarray(f["sample/matrix/indptr"][()], dtype=np.int64)
    n, d = len(samples), len(taxa)
    if len(indptr) != n + 1 or indptr[0] != 0 or indptr[-1] != len(data) or len(indices) != len(data) \
            or np.any(np.diff(indptr) < 0) or (len(indices) and (indices.min() < 0 or indices.max() >= d)):
        raise DepmicroError(f"{p}: damaged BIOM matrix (its CSR arrays do not fit {n} samples x {d} taxa)")
    X = np.zeros((n, d))
    rows = np.repeat(np.arange(n), np.diff(indptr))
    np.add.at(X, (rows, indices), data)  # a repeated (sample, taxon) pair adds up, as scipy would sum it
    return X, samples, taxa


def _read_json(p: Path) -> tuple[np.ndarray, list[str], list[str]]:
    try:
        doc = json.loads(p.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DepmicroError(f"{p}: neither a BIOM 2 (HDF5) nor a BIOM 1.0 (JSON) file ({_first(exc)})") from None
    if not isinstance(doc, dict) or not all(k in doc for k in ("rows", "columns", "data", "matrix_type")):
        raise DepmicroError(f"{p}: not a BIOM 1.0 table (it needs rows, columns, data and matrix_type)")
    try:
        taxa = [str(r["id"]) for r in doc["rows"]]
        samples = [str(c["id"]) for c in doc["columns"]]
    except (TypeError, KeyError):
        raise DepmicroError(f"{p}: BIOM rows and columns must be objects with an id") from None
    d, n = len(taxa), len(samples)
    try:
        if doc["matrix_type"] == "sparse":
            entries = np.asarray(doc["data"], dtype=np.float64).reshape(-1, 3)
            r, c = entries[:, 0].astype(np.int64), entries[:, 1].astype(np.int64)
            if len(entries) and (r.min() < 0 or r.max() >= d or c.min() < 0 or c.max() >= n):
                raise DepmicroError(f"{p}: a BIOM sparse entry lies outside its {d} x {n} shape")
            M = np.zeros((d, n))
            np.add.at(M, (r, c), entries[:, 2])
        elif doc["matrix_type"] == "dense":
            M = np.asarray(doc["data"], dtype=np.float64)
            if M.shape != (d, n):
                raise DepmicroError(f"{p}: the BIOM dense matrix is {M.shape}, its rows and columns say ({d}, {n})")
        else:
            raise DepmicroError(f"{p}: BIOM matrix_type must be sparse or dense, not {doc['matrix_type']!r}")
    except (TypeError, ValueError):
        raise DepmicroError(f"{p}: BIOM data holds non-numeric or ragged entries") from None
    return M.T, samples, taxa
