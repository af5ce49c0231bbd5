"""Algorithm 1 (AR step sizes) and Algorithm 2 (attention mask) of the paper, core/model/ar.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from depmicro.core.errors import DepmicroError
from depmicro.core.model.ar import (ar_step_probs, ar_steps, attention_mask, gather_index, infer_steps, step_attention,
                                 token_rank, train_steps)

# The appendix example (s = 7, c = 2, sz = [2, 2, 3], cs = [0, 2, 4, 7]) worked out by hand from the
# algorithm text: columns 0-1 open to all; vTv rows 2-3 see visible 0-1, rows 4-5 see visible 0-3;
# sTv: noisy step 1 (rows 6-7) sees no visible token, step 2 (rows 8-9) visible 0-1, step 3
# (rows 10-12) visible 0-3; sTs: block diagonal [2, 2, 3].
APPENDIX = np.array([
    # c c  v v v v  s s s s s s s
    [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
    [0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1],
    [0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1],
    [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1],
    [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1],
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
])


def test_appendix_example_exact():
    M = attention_mask(7, 2, [2, 2, 3], [0, 2, 4, 7])
    assert M.shape == (13, 13)
    np.testing.assert_array_equal(M, APPENDIX)


def test_dependency_modes_on_the_appendix_example():
    dep = np.eye(7, dtype=bool)
    dep[0, 1] = dep[1, 0] = True  # tokens 0 and 1 (step 1) depend on each other
    dep[4, 6] = True               # token 4 may attend token 6 (step 3), not the reverse
    paper = attention_mask(7, 2, [2, 2, 3], [0, 2, 4, 7], dep, mode="paper")
    restrict = attention_mask(7, 2, [2, 2, 3], [0, 2, 4, 7], dep, mode="restrict")
    off = attention_mask(7, 2, [2, 2, 3], [0, 2, 4, 7], dep, mode="off")
    np.testing.assert_array_equal(off, APPENDIX)
    sts = lambda M: M[6:, 6:]  # noqa: E731
    # paper (line 18 literally): OR with Dep blocks every dependent pair, the diagonal included
    assert sts(paper)[0, 1] == 1 and sts(paper)[0, 0] == 1 and sts(paper)[4, 6] == 1 and sts(paper)[4, 5] == 0
    # restrict: inside a step only self and dependents
    assert sts(restrict)[0, 1] == 0 and sts(restrict)[0, 0] == 0 and sts(restrict)[4, 6] == 0
    assert sts(restrict)[4, 5] == 1 and sts(restrict)[6, 4] == 1
    # outside sTs nothing changes
    for M in (paper, restrict):
        np.testing.assert_array_equal(M[:, :6], APPENDIX[:, :6])
        np.testing.assert_array_equal(M[:6], APPENDIX[:6])


def test_algorithm1_step_count_distribution():
    S, alpha, n = 8, 0.7, 20000
    rng = np.random.default_rng(0)
    counts = np.zeros(S)
    for _ in range(n):
        sz, cs = ar_steps(S, alpha, rng)
        assert sum(sz) == S and min(sz) >= 1 and cs[0] == 0 and cs[-1] == S
        assert all(cs[i + 1] - cs[i] == sz[i] for i in range(len(sz)))
        counts[len(sz) - 1] += 1
    b = (1 - alpha) / (1 - alpha**S)
    expected = n * b * alpha ** np.arange(S)
    np.testing.assert_allclose(ar_step_probs(S, alpha), expected / n)
    assert chisquare(counts, expected).pvalue > 1e-3
    assert counts[0] / n == pytest.approx(b, abs=0.015)


def test_algorithm1_uniform_at_alpha_one():
    rng = np.random.default_rng(1)
    counts = np.bincount([len(ar_steps(5, 1.0, rng)[0]) for _ in range(10000)], minlength=6)[1:]
    assert chisquare(counts, np.full(5, 2000)).pvalue > 1e-3


def test_algorithm1_rejects_bad_input():
    with pytest.raises(DepmicroError):
        ar_steps(0, 0.9, np.random.default_rng(0))
    with pytest.raises(DepmicroError):
        ar_steps(5, 1.5, np.random.default_rng(0))


@pytest.mark.parametrize("mode", ["paper", "restrict", "off"])
def test_model_layout_is_algorithm2_up_to_permutation(mode):
    """The model keeps tokens in microbe order and marks AR steps per token; reordered into AR order
    (and without the last step's clean copies, which Algorithm 2 does not have) it must be Algorithm 2."""
    rng = np.random.default_rng(3)
    D, c = 9, 2
    order = rng.permutation(D)         # order[p] = microbe generated at AR position p
    sz, cs = [2, 3, 4], [0, 2, 5, 9]
    step = np.zeros(D, dtype=np.int64)
    for k in range(3):
        step[order[cs[k] : cs[k + 1]]] = k + 1
    dep = rng.random((D, D)) < 0.4
    np.fill_diagonal(dep, True)
    allow = step_attention(torch.as_tensor(step)[None], c, torch.as_tensor(dep), mode)[0, 0].numpy()
    v = D - sz[-1]
    keep = list(range(c)) + [c + int(j) for j in order[:v]] + [c + D + int(j) for j in order]
    ours = ~allow[np.ix_(keep, keep)]
    ref = attention_mask(D, c, sz, cs, dep[np.ix_(order, order)], mode=mode)
    np.testing.assert_array_equal(ours.astype(np.int8), ref)


def test_compact_noisy_tokens_match_the_full_layout():
    step = torch.tensor([[0, 1, 2, 0, 1, 2]])
    dep = torch.ones(6, 6, dtype=torch.bool)
    full = step_attention(step, 2, dep, "restrict")[0, 0]
    idx, valid = gather_index(step.numpy() > 0)
    compact = step_attention(step, 2, dep, "restrict", torch.as_tensor(idx), torch.as_tensor(valid))[0, 0]
    rows = list(range(8)) + [8 + int(j) for j in idx[0]]
    np.testing.assert_array_equal(compact.numpy(), full[np.ix_(rows, rows)].numpy())


def test_train_and_infer_steps_cover_targets_only():
    rng = np.random.default_rng(0)
    target = rng.random((20, 12)) < 0.4
    rank = np.arange(12)[::-1].copy()
    for step in (train_steps(target, rank, 0.8, rng), infer_steps(target, rank, 3)):
        assert ((step > 0) == target).all()
        for b in range(20):  # steps follow the AR order: a higher rank never comes in an earlier step
            cols = np.flatnonzero(target[b])
            s = step[b, cols]
            r = rank[cols]
            assert all(s[i] <= s[j] for i in range(len(cols)) for j in range(len(cols)) if r[i] < r[j])


def test_token_rank_orders():
    Y = np.array([[0.0, 1.0, 0.5], [0.0, 0.0, 0.5], [0.0, 2.0, 0.5]])
    obs = np.ones_like(Y, dtype=bool)
    np.testing.assert_array_equal(token_rank("index", Y, obs), [0, 1, 2])
    assert token_rank("variance", Y, obs)[1] == 0  # the most variable microbe goes first
    F = np.zeros((3, 3))
    F[0, 2] = F[1, 2] = 10.0  # microbe 2 drives 0 and 1: a cause, so it goes first
    assert token_rank("dependency", Y, obs, F, 3.0)[2] == 0
    with pytest.raises(DepmicroError):
        token_rank("dependency", Y, obs)


@pytest.mark.parametrize("block", [0, 3, 4, 20])
def test_blocked_context_opens_only_what_algorithm2_opens(block):
    """Clean tokens attend in blocks: every open pair is open in step_attention (no leakage), and one
    block (block 0 or >= D) is exactly step_attention's context rows."""
    from depmicro.core.model.ar import block_size, context_attention

    rng = np.random.default_rng(block)
    B, D, c = 3, 10, 2
    step = torch.as_tensor(rng.integers(0, 4, size=(B, D)))
    ref = step_attention(step, c, None, "off")[:, 0, : c + D, : c + D]
    blocks = context_attention(step, c, block)[:, 0]
    b = block_size(D, block)
    nb = -(-D // b)
    assert blocks.shape == (B * nb, b, c + b)
    full = torch.zeros(B, c + D, c + D, dtype=torch.bool)
    full[:, :c, :c] = True  # condition tokens attend each other (computed apart from the blocks)
    for i in range(nb):
        cols = list(range(i * b, min((i + 1) * b, D)))
        n = len(cols)
        blk = blocks.view(B, nb, b, c + b)[:, i]
        assert not blk[:, n:, c:].any() and blk[:, :, :c].all()  # padding: closed keys, queries see the condition
        rows = [c + j for j in cols]
        full[:, rows, :c] = blk[:, :n, :c]
        full[:, np.ix_(rows, rows)[0], np.ix_(rows, rows)[1]] = blk[:, :n, c : c + n]
    assert not (full & ~ref).any()
    if b == D:
        assert torch.equal(full, ref)
    else:
        assert (ref & ~full).any()  # blocks did close some cross-block pairs
