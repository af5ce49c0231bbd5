"""Which microbes share a DAT attention block (`attn_layout: correlation`).

Why: the DAT's tokens attend only inside blocks of `attn_block` microbes (linear cost in D). In index
order a microbe's partners are mostly elsewhere: on kraken_like 1,000 x 1,700 (7 blocks of 256) 12 % of
the planted pairs and 14 % of each microbe's 8 most correlated microbes share its block, so at the
Kraken width the DAT sees little of the structure it is built for. Laying the microbes out so that
correlated ones are neighbours (balanced recursive spectral bisection of the graph that joins each
microbe to its k most correlated others, from the training view only) puts 55 % and 79 % together.
Measured (docs/model-log.md section 28): over small.yaml's encoder at 1,700 taxa the DAT's validation gain
roughly doubles; over wide.yaml's, which already regresses each microbe on those partners, it costs a little;
over a standardized VAE without partners it adds 0.002 (section 29). Off by default: no config measured yet
both leads the baselines and gains from it.
"""
from __future__ import annotations

import numpy as np

from depmicro.core.model.vae import abs_correlation


def correlation_layout(Y: np.ndarray, observed: np.ndarray, block: int, k: int = 8) -> np.ndarray:
    """A permutation of the microbes whose consecutive runs of `block` are the attention blocks; the
    identity when one block holds them all."""
    D = Y.shape[1]
    if block <= 0 or block >= D:
        return np.arange(D)
    corr, _, _ = abs_correlation(Y, observed)
    np.fill_diagonal(corr, 0.0)
    top = np.argsort(-corr, axis=1, kind="stable")[:, : min(k, D - 1)]
    W = np.zeros_like(corr)
    rows = np.arange(D)[:, None]
    W[rows, top] = corr[rows, top]
    W = np.maximum(W, W.T)
    return np.concatenate(_bisect(W, np.arange(D), block))


def _bisect(W: np.ndarray, nodes: np.ndarray, block: int) -> list[np.ndarray]:
    """Split `nodes` along the Fiedler vector of their normalized Laplacian, the first part a whole number of
    blocks, until each part fits one block."""
    if len(nodes) <= block:
        return [nodes]
    sub = W[np.ix_(nodes, nodes)]
    d = sub.sum(1) + 1e-9
    lap = np.eye(len(nodes)) - sub / np.sqrt(d[:, None] * d[None, :])
    _, vec = np.linalg.eigh(lap)
    order = nodes[np.argsort(vec[:, 1] / np.sqrt(d), kind="stable")]
    left = (-(-len(nodes) // block) // 2) * block
    return _bisect(W, order[:left], block) + _bisect(W, order[left:], block)
