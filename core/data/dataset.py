"""Loading microbiome count tables and the paper's normalization (Eq. 10-11).

Every reader funnels into `_validated`, so the same checks (and the same one-line messages)
apply whatever the file format.
"""
from __future__ import annotations

import gzip
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from depmicro.core.data.biom import check_biom, read_biom
from depmicro.core.errors import DepmicroError

FORMATS = "expected .h5ad, .csv, .tsv, .txt (optionally .gz) or .biom"


@dataclass
class Dataset:
    """A samples x taxa count matrix with its names and optional per-sample metadata."""

    counts: np.ndarray  # (n, D) float64, non-negative
    obs_names: list[str]
    var_names: list[str]
    metadata: pd.DataFrame | None = None  # index = obs_names, one row per sample
    name: str = "data"
    missing: np.ndarray | None = field(default=None, repr=False)  # (n, D) bool; only with allow_missing
    layout: str = "samples x taxa"  # how the file laid the matrix out ("taxa x samples": read transposed)

    @property
    def n_samples(self) -> int:
        return self.counts.shape[0]

    @property
    def n_taxa(self) -> int:
        return self.counts.shape[1]

    @property
    def normalized(self) -> np.ndarray:
        return normalize(self.counts)

    def metadata_text(self) -> list[str | None]:
        """One line per sample ("sample type: Primary Tumor; pathologic stage: Stage IVA"); None if absent."""
        if self.metadata is None:
            return [None] * self.n_samples
        lines: list[str | None] = []
        for _, row in self.metadata.iterrows():
            parts = [f"{str(k).replace('_', ' ')}: {v}" for k, v in row.items() if pd.notna(v) and str(v) != ""]
            lines.append("; ".join(parts) if parts else None)
        return lines


def normalize(counts: np.ndarray) -> np.ndarray:
    """Eq. 10-11: log10(100 * M / rowsum(M) + 1). All-zero rows stay zero instead of NaN."""
    counts = np.asarray(counts, dtype=np.float64)
    rowsum = counts.sum(axis=1, keepdims=True)
    rel = np.divide(100.0 * counts, rowsum, out=np.zeros_like(counts), where=rowsum > 0)
    return np.log10(rel + 1.0)


def inspect(ds: Dataset) -> dict:
    counts = ds.counts
    return {
        "name": ds.name,
        "n_samples": int(counts.shape[0]),
        "n_taxa": int(counts.shape[1]),
        "layout": ds.layout,
        "zero_fraction": round(float((counts == 0).mean()), 4),
        "n_empty_samples": int((counts.sum(axis=1) == 0).sum()),
        "n_empty_taxa": int((counts.sum(axis=0) == 0).sum()),
        "has_metadata": ds.metadata is not None,
        "metadata_columns": [] if ds.metadata is None else [str(c) for c in ds.metadata.columns],
    }


def load_dataset(
    path: str | os.PathLike,
    metadata: str | os.PathLike | None = None,
    orientation: str = "auto",
    allow_missing: bool = False,
) -> Dataset:
    """Read `.h5ad`, `.biom` (BIOM 2 HDF5 or 1.0 JSON: core/data/biom.py) or a CSV/TSV table (samples x taxa,
    or taxa x samples as TCMA ships them).

    A table's `orientation` is `samples` (rows are samples), `taxa` (rows are taxa) or `auto`, which takes
    rows as taxa when the labels say so (`_rows_are_taxa`: a taxon header, numeric taxon ids or lineages as
    row labels, TCGA barcodes as column labels). `allow_missing` accepts NaN/empty cells as entries to impute.
    """
    p = Path(path)
    if not p.exists():
        raise DepmicroError(f"{p}: no such file")
    if p.is_dir():
        raise DepmicroError(f"{p}: is a directory, expected a data file")
    if orientation not in ("auto", "samples", "taxa"):
        raise DepmicroError(f"orientation must be auto, samples or taxa, not {orientation!r}")
    suffix = "".join(p.suffixes[-2:]).lower() if p.suffix == ".gz" else p.suffix.lower()
    if suffix == ".h5ad":
        ds = _read_h5ad(p, allow_missing)
    elif suffix in (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz"):
        ds = _read_table(p, orientation, allow_missing)
    elif suffix == ".biom":  # observations (taxa) x samples by definition: no orientation to guess
        ds = replace(_validated(*read_biom(p), p, allow_missing, None), layout="taxa x samples")
    else:
        raise DepmicroError(f"{p}: unknown format {p.suffix!r} ({FORMATS})")
    if metadata is not None:
        ds.metadata = load_metadata(metadata, ds.obs_names)
    return ds


def peek_dataset(path: str | os.PathLike) -> None:
    """The cheap part of load_dataset: the path is a file of a known format whose header reads
    (a table's first line and separator, an .h5ad's HDF5 structure with an X). A study checks every
    data set this way before it starts Ray; the full checks run when the driver loads the data."""
    p = Path(path)
    if not p.exists():
        raise DepmicroError(f"{p}: no such file")
    if p.is_dir():
        raise DepmicroError(f"{p}: is a directory, expected a data file")
    suffix = "".join(p.suffixes[-2:]).lower() if p.suffix == ".gz" else p.suffix.lower()
    if suffix == ".h5ad":
        import h5py

        try:
            with h5py.File(p, "r") as f:
                if "X" not in f:
                    raise DepmicroError(f"{p}: the AnnData file has no X matrix")
        except OSError as exc:
            raise DepmicroError(f"{p}: not a readable .h5ad file ({str(exc).splitlines()[0] if str(exc) else 'OSError'})") from None
    elif suffix in (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz"):
        header = _first_line(p)
        if not header.strip():
            raise DepmicroError(f"{p}: file is empty")
        _check_separator(p, header)
        if header.count(_sep_for(p)) < 1:
            raise DepmicroError(f"{p}: the header has a single column; expected sample ids and taxa")
    elif suffix == ".biom":
        check_biom(p)
    else:
        raise DepmicroError(f"{p}: unknown format {p.suffix!r} ({FORMATS})")


def _read_h5ad(p: Path, allow_missing: bool) -> Dataset:
    import anndata as ad

    try:
        with warnings.catch_warnings():  # e.g. duplicate names: _validated says that in one line, not a warning
            warnings.simplefilter("ignore")
            adata = ad.read_h5ad(p)
    except Exception as exc:  # h5py/anndata raise many kinds; the user needs one line
        raise DepmicroError(f"{p}: not a readable .h5ad file ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    X = adata.X
    if X is None:
        raise DepmicroError(f"{p}: the AnnData object has no X matrix")
    if hasattr(X, "toarray"):
        X = X.toarray()
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise DepmicroError(f"{p}: X holds non-numeric values") from None
    meta = None
    if adata.obs.shape[1] > 0:
        meta = adata.obs.copy()
        meta.index = meta.index.astype(str)
    return _validated(X, list(map(str, adata.obs_names)), list(map(str, adata.var_names)), p, allow_missing, meta)


def _sep_for(p: Path) -> str:
    name = p.name.lower().removesuffix(".gz")
    return "," if name.endswith(".csv") else "\t"


_SEPARATORS = {",": "','", "\t": "a tab", ";": "';'", "|": "'|'"}


def _first_line(p: Path) -> str:
    """The header line, through gzip where the name says so; DepmicroError for a damaged file."""
    try:
        if p.name.lower().endswith(".gz"):
            with gzip.open(p, "rt", encoding="utf-8", newline="") as f:
                return f.readline()
        with open(p, encoding="utf-8", newline="") as f:
            return f.readline()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DepmicroError(f"{p}: not a readable gzip file ({exc})" if p.name.lower().endswith(".gz")
                            else f"{p}: cannot read ({exc})") from None
    except UnicodeDecodeError:
        raise DepmicroError(f"{p}: not a UTF-8 text table (binary content?)") from None


def _check_separator(p: Path, header: str) -> None:
    """A ';'-separated .csv parses as one column; say which separator the file uses instead."""
    sep = _sep_for(p)
    if sep in header:
        return
    found = max((c for c in _SEPARATORS if c != sep), key=header.count)
    if header.count(found):
        raise DepmicroError(f"{p}: fields are separated by {_SEPARATORS[found]}, but a {p.name.lower().removesuffix('.gz').rsplit('.', 1)[-1]} "
                            f"file must use {_SEPARATORS[sep]} (convert it, or name it .csv/.tsv to match)")


def _read_table(p: Path, orientation: str, allow_missing: bool) -> Dataset:
    _check_separator(p, _first_line(p))
    try:
        df = pd.read_csv(p, sep=_sep_for(p), index_col=0, dtype=str, keep_default_na=False)
        header = list(pd.read_csv(p, sep=_sep_for(p), nrows=1, header=None, dtype=str, keep_default_na=False).iloc[0])[1:]
    except pd.errors.EmptyDataError:
        raise DepmicroError(f"{p}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DepmicroError(f"{p}: cannot parse as a table ({str(exc).splitlines()[0]})") from None
    except (OSError, EOFError, zlib.error) as exc:  # a gzip stream damaged after its header
        raise DepmicroError(f"{p}: not a readable file ({type(exc).__name__}: {exc})") from None
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise DepmicroError(f"{p}: table has no data rows or columns")
    if len(header) != df.shape[1]:  # pandas takes extra leading fields of a longer first row as the index
        raise DepmicroError(f"{p}: rows are longer than the header ({len(header) + 1} header fields, "
                            f"{df.shape[1] + 1 + (df.index.nlevels - 1)} in a data row)")
    df.columns = header  # pandas renames duplicate headers ("t1.1"); keep them so duplicates are caught
    first = str(df.index.name or "").lower()
    if orientation == "auto":
        orientation = "taxa" if _rows_are_taxa(first, list(df.index), list(df.columns)) else "samples"
    values = df.replace({"": "nan", "NA": "nan", "NaN": "nan", "nan": "nan"})
    try:
        X = values.to_numpy().astype(np.float64)
    except ValueError:
        bad = _first_non_numeric(values)
        raise DepmicroError(f"{p}: non-numeric cell {bad}") from None
    rows, cols = [str(i) for i in df.index], [str(c) for c in df.columns]
    if orientation == "taxa":
        X, rows, cols = X.T, cols, rows
        return replace(_validated(X, rows, cols, p, allow_missing, None), layout="taxa x samples")
    return _validated(X, rows, cols, p, allow_missing, None)


TAXON_HEADERS = ("taxon", "taxa", "genus", "species", "tax_id", "taxid", "feature", "otu", "asv", "#otu id")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# a rank prefix as Kraken/Bracken (kraken-biom, mpa reports), MetaPhlAn and QIIME write lineages: "g__Prevotella",
# "k__Bacteria|p__Bacteroidetes", "d__Bacteria; p__Firmicutes"
_LINEAGE = re.compile(r"(^|[;|])\s*[dkpcofgst]__")
_SAMPLE_ID = re.compile(r"^TCGA[-.][0-9A-Z]{2}[-.][0-9A-Z]{4}", re.IGNORECASE)  # R's make.names writes '.' for '-'


def _share(labels: list, pattern: re.Pattern) -> float:
    return sum(bool(pattern.search(str(x))) for x in labels) / max(len(labels), 1)


def _rows_are_taxa(first_header: str, rows: list, cols: list) -> bool:
    """TCMA ships taxa x samples with NCBI taxon ids (or a `taxon`-like header) as row labels; Kraken-style
    tables label taxa with rank-prefixed lineages and samples with TCGA barcodes, in either orientation."""
    if first_header in TAXON_HEADERS:
        return True
    for pattern, rows_are_taxa in ((_LINEAGE, True), (_SAMPLE_ID, False)):
        in_rows, in_cols = _share(rows, pattern), _share(cols, pattern)
        if max(in_rows, in_cols) >= 0.5 and min(in_rows, in_cols) == 0:
            return rows_are_taxa == (in_rows > in_cols)
    return all(_is_number(str(r)) for r in rows) and not all(_is_number(str(c)) for c in cols)


def _first_non_numeric(df: pd.DataFrame) -> str:
    for r, row in df.iterrows():
        for c, v in row.items():
            if not _is_number(v):
                return f"{v!r} at row {r!s}, column {c!s}"
    return "?"


def _validated(X: np.ndarray, obs: list[str], var: list[str], p: Path, allow_missing: bool, meta: pd.DataFrame | None) -> Dataset:
    if X.ndim != 2 or X.size == 0:
        raise DepmicroError(f"{p}: empty matrix ({X.shape[0] if X.ndim else 0} samples x {X.shape[1] if X.ndim == 2 else 0} taxa)")
    if np.isinf(X).any():
        r, c = np.argwhere(np.isinf(X))[0]
        raise DepmicroError(f"{p}: infinite value at sample {obs[r]!r}, taxon {var[c]!r}")
    nan = np.isnan(X)
    if nan.any() and not allow_missing:
        r, c = np.argwhere(nan)[0]
        raise DepmicroError(f"{p}: missing/NaN value at sample {obs[r]!r}, taxon {var[c]!r} ({int(nan.sum())} in all); "
                             "complete counts are needed here (NaN/empty cells are what `depmicro impute` fills)")
    if (X[~nan] < 0).any():
        r, c = np.argwhere(np.nan_to_num(X) < 0)[0]
        raise DepmicroError(f"{p}: negative count {X[r, c]:g} at sample {obs[r]!r}, taxon {var[c]!r}")
    with np.errstate(over="ignore", invalid="ignore"):
        sums = np.where(nan, 0.0, X).sum(axis=1)
    if not np.isfinite(sums).all() or not np.isfinite(100.0 * sums).all():
        r = int(np.flatnonzero(~np.isfinite(100.0 * sums))[0])
        raise DepmicroError(f"{p}: counts of sample {obs[r]!r} are too large to normalize (their sum overflows a float64)")
    for kind, names in (("sample", obs), ("taxon", var)):
        dup = pd.Index(names)[pd.Index(names).duplicated()]
        if len(dup):
            raise DepmicroError(f"{p}: duplicate {kind} id {dup[0]!r}")
    missing = nan if nan.any() else None
    # row-major whatever layout pandas handed back: row sums then add in the same order as for an .h5ad, so a table
    # and the same counts as .h5ad normalize bit for bit (column-major gave 1-ulp differences)
    counts = np.ascontiguousarray(np.where(nan, 0.0, X))
    return Dataset(counts=counts, obs_names=obs, var_names=var, metadata=meta, name=p.name.split(".")[0], missing=missing)


def load_metadata(path: str | os.PathLike, obs_names: list[str]) -> pd.DataFrame:
    """Read a per-sample table (first column = sample id) and align it to `obs_names`."""
    p = Path(path)
    if not p.exists():
        raise DepmicroError(f"{p}: no such metadata file")
    try:
        meta = pd.read_csv(p, sep=_sep_for(p), index_col=0, dtype=str)
    except pd.errors.EmptyDataError:
        raise DepmicroError(f"{p}: metadata file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DepmicroError(f"{p}: cannot parse metadata ({str(exc).splitlines()[0]})") from None
    meta.index = meta.index.astype(str)
    if meta.index.duplicated().any():
        raise DepmicroError(f"{p}: duplicate sample id {meta.index[meta.index.duplicated()][0]!r} in metadata")
    absent = [s for s in obs_names if s not in meta.index]
    if absent:
        raise DepmicroError(f"{p}: metadata does not cover {len(absent)} of {len(obs_names)} samples (first: {absent[0]!r})")
    return meta.loc[obs_names]


def taxa_difference(var_names: list[str], ref: list[str]) -> str | None:
    """Why two taxon lists are not the same set (None when they are, in whatever order)."""
    extra = sorted(set(var_names) ^ set(ref))
    if extra:
        return f"{len(extra)} taxa differ (e.g. {extra[0]!r})"
    if len(var_names) != len(ref):
        return f"{len(var_names)} taxa against {len(ref)}"
    return None


def check_same_taxa(datasets: list[Dataset]) -> None:
    """Pretraining sets must share the target's taxa in the same order (align_taxa puts them in it)."""
    ref = datasets[0]
    for ds in datasets[1:]:
        if ds.var_names != ref.var_names:
            what = taxa_difference(ds.var_names, ref.var_names) or "same taxa in a different order"
            raise DepmicroError(f"{ds.name} and {ref.name} do not share the same taxa: {what}")


def in_taxon_order(ds: Dataset, var_names: list[str]) -> Dataset:
    """`ds` with its columns in the order of `var_names`, which must name the same taxa: tables from
    different pipelines list the same taxa in different orders, and a column's position must never
    stand in for its name."""
    if ds.var_names == list(var_names):
        return ds
    what = taxa_difference(ds.var_names, list(var_names))
    if what:
        raise DepmicroError(f"{ds.name}: taxa do not match ({what})")
    pos = {v: i for i, v in enumerate(ds.var_names)}
    idx = np.array([pos[v] for v in var_names])
    return replace(ds, counts=ds.counts[:, idx], var_names=list(var_names),
                   missing=None if ds.missing is None else ds.missing[:, idx])


def align_taxa(target: Dataset, others: Sequence[Dataset]) -> list[Dataset]:
    """The pretraining sets with their columns in the target's taxon order; a set with other taxa is refused."""
    for ds in others:
        what = taxa_difference(ds.var_names, target.var_names)
        if what:
            raise DepmicroError(f"{ds.name} and {target.name} do not share the same taxa: {what}")
    return [in_taxon_order(ds, target.var_names) for ds in others]
