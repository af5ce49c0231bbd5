import json
import re

import numpy as np
import pandas as pd
import pytest

from depmicro.core.data import Dataset, align_taxa, check_same_taxa, in_taxon_order, inspect, load_dataset, normalize
from depmicro.core.errors import DepmicroError
from tests.helpers import tcma_path


def test_normalize_matches_eq_10_11_and_keeps_empty_rows_zero():
    counts = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [5.0, 5.0, 10.0]])
    Y = normalize(counts)
    assert np.allclose(Y[0], np.log10([26.0, 76.0, 1.0]))
    assert np.array_equal(Y[1], np.zeros(3))
    assert np.allclose(Y[2], np.log10([26.0, 26.0, 51.0]))
    assert np.isfinite(Y).all()
    # relative abundances of a nonempty row sum to 100 percent
    assert np.allclose((10 ** Y[[0, 2]] - 1).sum(axis=1), 100.0)


@pytest.mark.parametrize(
    "name, n, d, zero, empty",
    [("stad", 530, 106, 0.876, 209), ("coad", 561, 106, 0.632, 17), ("hnsc", 587, 106, 0.796, 126)],
)
def test_tcma_sets_match_the_data_readme(name, n, d, zero, empty):
    info = inspect(load_dataset(tcma_path(name)))
    assert (info["n_samples"], info["n_taxa"], info["n_empty_samples"]) == (n, d, empty)
    assert info["zero_fraction"] == pytest.approx(zero, abs=5e-4)


def test_hnsc_metadata_joins_on_sample_id():
    ds = load_dataset(tcma_path("hnsc"), metadata=tcma_path("hnsc_metadata.tsv"))
    assert list(ds.metadata.index) == ds.obs_names
    assert set(ds.metadata.columns) == {"sample_type", "pathologic_stage"}
    assert ds.metadata["pathologic_stage"].isna().sum() == 65
    lines = ds.metadata_text()
    assert lines[0] == "sample type: Primary Tumor; pathologic stage: Stage IVA"
    assert all(line is not None for line in lines)  # sample type is always known


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_csv_both_orientations_give_the_same_matrix(tmp_path):
    samples = _write(tmp_path, "s.csv", "sample,t1,t2,t3\na,1,0,2\nb,0,0,0\n")
    taxa = _write(tmp_path, "t.tsv", "taxon\ta\tb\nt1\t1\t0\nt2\t0\t0\nt3\t2\t0\n")
    tcma = _write(tmp_path, "tcma.tsv", "\ta\tb\n194.0\t1\t0\n203.0\t0\t0\n204.0\t2\t0\n")
    a, b, c = load_dataset(samples), load_dataset(taxa), load_dataset(tcma)
    assert a.obs_names == b.obs_names == c.obs_names == ["a", "b"]
    assert a.var_names == b.var_names == ["t1", "t2", "t3"]
    assert c.var_names == ["194.0", "203.0", "204.0"]
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.counts, c.counts)
    forced = load_dataset(samples, orientation="taxa")
    assert forced.obs_names == ["t1", "t2", "t3"]


@pytest.mark.parametrize("header, rows, transposed", [
    ("", ["k__Bacteria|g__Prevotella", "k__Bacteria|g__Bacteroides"], True),      # MetaPhlAn/mpa, taxa x samples
    ("", ["d__Bacteria; g__Prevotella", "d__Bacteria; g__Bacteroides"], True),    # QIIME 2 / GTDB lineages
    ("id", ["g__Prevotella", "g__Bacteroides"], True),
    ("", ["TCGA-AB-1234-01A", "TCGA-CD-5678-01A"], False),                        # barcodes label the rows: samples
])
def test_kraken_style_labels_decide_the_orientation(tmp_path, header, rows, transposed):
    """Kraken-TCGA genus tables come both ways round, with lineage names and TCGA barcodes instead of a `taxon`
    header or numeric ids: read the wrong way they would be 1,700 "samples" of 1,000 "taxa", silently."""
    cols = ["TCGA-ZZ-0001-01A", "TCGA-ZZ-0002-01A", "TCGA-ZZ-0003-01A"] if transposed else ["g__A", "g__B", "g__C"]
    text = ",".join([header, *cols]) + "\n" + "".join(f"{r},1,0,{i + 2}\n" for i, r in enumerate(rows))
    ds = load_dataset(_write(tmp_path, "k.csv", text))
    assert (ds.obs_names, ds.var_names) == ((cols, rows) if transposed else (rows, cols))
    assert ds.counts.shape == ((3, 2) if transposed else (2, 3))
    assert inspect(ds)["layout"] == ("taxa x samples" if transposed else "samples x taxa")  # what data inspect says


@pytest.mark.parametrize("sep", ["-", "."])
def test_barcodes_as_columns_mean_taxa_rows_even_with_plain_genus_names(tmp_path, sep):
    """A table written from R (make.names turns TCGA-AB-1234 into TCGA.AB.1234) with bare genus names as rows."""
    cols = [f"TCGA{sep}ZZ{sep}000{i}{sep}01A" for i in range(3)]
    text = ",".join(["", *cols]) + "\nPrevotella,1,0,2\nBacteroides,3,4,0\n"
    ds = load_dataset(_write(tmp_path, "r.csv", text))
    assert (ds.obs_names, ds.var_names) == (cols, ["Prevotella", "Bacteroides"])


def test_a_table_normalizes_bit_for_bit_like_the_h5ad_of_the_same_counts(tmp_path):
    # stad written out as a samples x taxa CSV: pandas hands the values back column-major, and row sums over a
    # column-major array added in another order (1-ulp differences), so a split, a VAE cache key and every
    # figure changed with the file format
    h5ad = load_dataset(tcma_path("stad"))
    p = tmp_path / "stad.csv"
    pd.DataFrame(h5ad.counts, index=h5ad.obs_names, columns=h5ad.var_names).rename_axis("sample").to_csv(p, float_format="%.17g")
    table = load_dataset(p)
    assert np.array_equal(table.counts, h5ad.counts) and table.counts.flags["C_CONTIGUOUS"]
    assert np.array_equal(table.normalized, h5ad.normalized)


def test_missing_cells_only_with_allow_missing(tmp_path):
    p = _write(tmp_path, "m.csv", "sample,t1,t2\na,1,\nb,NaN,3\n")
    with pytest.raises(DepmicroError, match=r"missing/NaN value at sample 'a', taxon 't2' \(2 in all\).*what `depmicro impute` fills"):
        load_dataset(p)
    ds = load_dataset(p, allow_missing=True)
    assert ds.missing.tolist() == [[False, True], [True, False]]
    assert ds.counts.tolist() == [[1.0, 0.0], [0.0, 3.0]]


def test_check_same_taxa_names_the_difference():
    a = Dataset(np.ones((2, 2)), ["s1", "s2"], ["t1", "t2"], name="a")
    b = Dataset(np.ones((2, 2)), ["s1", "s2"], ["t1", "t9"], name="b")
    c = Dataset(np.ones((2, 2)), ["s1", "s2"], ["t2", "t1"], name="c")
    check_same_taxa([a, a])
    with pytest.raises(DepmicroError, match="2 taxa differ"):
        check_same_taxa([a, b])
    with pytest.raises(DepmicroError, match="different order"):
        check_same_taxa([a, c])


def test_align_taxa_reorders_columns_by_name_and_refuses_other_taxa():
    a = Dataset(np.array([[1.0, 2.0, 3.0]]), ["s1"], ["t1", "t2", "t3"], name="a")
    c = Dataset(np.array([[30.0, 10.0, 20.0], [3.0, 1.0, 2.0]]), ["s1", "s2"], ["t3", "t1", "t2"], name="c",
                missing=np.array([[True, False, False], [False, False, True]]))
    (got,) = align_taxa(a, [c])
    assert got.var_names == ["t1", "t2", "t3"] and got.counts.tolist() == [[10.0, 20.0, 30.0], [1.0, 2.0, 3.0]]
    assert got.missing.tolist() == [[False, False, True], [False, True, False]]
    assert c.var_names == ["t3", "t1", "t2"]  # the input is not changed
    assert in_taxon_order(a, ["t1", "t2", "t3"]) is a
    b = Dataset(np.ones((1, 3)), ["s1"], ["t1", "t2", "t9"], name="b")
    with pytest.raises(DepmicroError, match="b and a do not share the same taxa: 2 taxa differ"):
        align_taxa(a, [b])
    with pytest.raises(DepmicroError, match="taxa do not match"):
        in_taxon_order(b, a.var_names)


def test_h5ad_with_duplicate_names_is_one_error_and_no_library_warning(tmp_path):
    """anndata warns about duplicate obs names while reading; the user gets the one-line refusal only
    (tests/test_bad_inputs.py runs the CLI with warnings ignored, so it cannot see a warning line)."""
    import warnings

    import anndata as ad

    a = ad.AnnData(X=np.array([[1.0, 2.0], [3.0, 4.0]]))
    a.obs_names = ["s1", "s1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.write_h5ad(tmp_path / "dup.h5ad")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DepmicroError, match="duplicate sample id 's1'"):
            load_dataset(tmp_path / "dup.h5ad")
    assert [str(w.message) for w in caught] == []


def _biom2(path, counts, samples, taxa):
    """A BIOM 2.1 file as the spec lays it out (both the observation- and the sample-major CSR copies)."""
    import h5py
    import scipy.sparse as sp

    M = sp.csr_matrix(counts.T)  # observations x samples
    S = sp.csr_matrix(counts)    # samples x observations
    with h5py.File(path, "w") as f:
        f.attrs.update({"id": "t", "type": "OTU table", "format-url": "http://biom-format.org",
                        "format-version": [2, 1], "generated-by": "test", "creation-date": "2026-12-07",
                        "shape": [len(taxa), len(samples)], "nnz": M.nnz})
        for group, ids, mat in (("observation", taxa, M), ("sample", samples, S)):
            f.create_dataset(f"{group}/ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
            for key in ("data", "indices", "indptr"):
                f.create_dataset(f"{group}/matrix/{key}", data=getattr(mat, key))


def test_biom_2_and_1_read_like_the_same_csv(tmp_path):
    counts = np.array([[5.0, 0.0, 2.0], [0.0, 0.0, 7.0], [1.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    samples, taxa = ["TCGA-A1", "TCGA-A2", "TCGA-A3", "TCGA-A4"], ["g__Prevotella", "g__Bacteroides", "g__Fusobacterium"]
    pd.DataFrame(counts, index=pd.Index(samples, name="sample"), columns=taxa).to_csv(tmp_path / "t.csv")
    _biom2(tmp_path / "t2.biom", counts, samples, taxa)
    sparse = {"id": "t", "format": "Biological Observation Matrix 1.0.0", "type": "OTU table", "matrix_type": "sparse",
              "matrix_element_type": "float", "shape": [3, 4], "rows": [{"id": t, "metadata": None} for t in taxa],
              "columns": [{"id": s, "metadata": None} for s in samples],
              "data": [[j, i, counts[i, j]] for i in range(4) for j in range(3) if counts[i, j]]}
    (tmp_path / "t1.biom").write_text(json.dumps(sparse))
    (tmp_path / "d1.biom").write_text(json.dumps({**sparse, "matrix_type": "dense", "data": counts.T.tolist()}))
    ref = load_dataset(tmp_path / "t.csv")
    for name in ("t2.biom", "t1.biom", "d1.biom"):
        ds = load_dataset(tmp_path / name)
        assert (ds.obs_names, ds.var_names) == (samples, taxa) and ds.layout == "taxa x samples", name
        assert np.array_equal(ds.counts, ref.counts) and np.array_equal(ds.normalized, ref.normalized), name
    import h5py

    with h5py.File(tmp_path / "anndata_like.biom", "w") as f:  # HDF5, but not BIOM's groups
        f.create_dataset("observation/ids", data=np.array(taxa, dtype=object), dtype=h5py.string_dtype())
    with pytest.raises(DepmicroError, match="not a BIOM 2 table \\(no sample/ids\\)"):
        load_dataset(tmp_path / "anndata_like.biom")


@pytest.mark.parametrize("content, message", [
    (b"\x89HDF\r\n\x1a\ngarbage", "not a readable BIOM (HDF5) file"),
    (b"{not json", "neither a BIOM 2 (HDF5) nor a BIOM 1.0 (JSON) file"),
    (b'{"rows": [], "columns": []}', "not a BIOM 1.0 table"),
    (b'{"rows": [{"id": "a"}], "columns": [{"id": "s"}], "matrix_type": "sparse", "data": [[3, 0, 1]]}', "outside"),
    (b'{"rows": [{"id": "a"}], "columns": [{"id": "s"}, {"id": "t"}], "matrix_type": "dense", "data": [[1, -2]]}',
     "negative count -2"),
])
def test_bad_biom_is_one_line(tmp_path, content, message):
    p = tmp_path / "x.biom"
    p.write_bytes(content)
    with pytest.raises(DepmicroError, match=re.escape(message)):
        load_dataset(p)
