"""k-means in torch (CPU or GPU): codebook initialisation for RQ-VAE and the levels of RQ-KMeans."""

from __future__ import annotations

import torch

_CHUNK = 16384  # rows per distance block: bounds memory at K=2048 without slowing small K


def sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """||x - c||^2 up to the per-row constant ||x||^2, which does not change an argmin."""
    return (c * c).sum(-1) - 2.0 * x @ c.T


def assign(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of every row of x, computed in blocks."""
    return torch.cat([sq_dists(xb, c).argmin(-1) for xb in x.split(_CHUNK)])


def kmeans_pp(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centre drawn with probability ~ squared distance to the nearest."""
    n = x.shape[0]
    x_sq = (x * x).sum(-1)

    def dist_to(i: torch.Tensor) -> torch.Tensor:
        # ||x||^2 - 2 x.c + ||c||^2: one mat-vec, no N x D temporary (100k x 384 stays fast).
        c = x[i].squeeze(0)
        return (x_sq - 2.0 * (x @ c) + x_sq[i]).clamp(min=0)

    first = torch.randint(n, (1,), generator=generator, device=x.device)
    chosen = [first]
    d2 = dist_to(first)
    for _ in range(k - 1):
        # All points coincide with centres (fewer distinct points than k): fall back to uniform.
        weights = d2 if d2.sum() > 0 else torch.ones_like(d2)
        nxt = torch.multinomial(weights, 1, generator=generator)
        chosen.append(nxt)
        d2 = torch.minimum(d2, dist_to(nxt))
    return x[torch.cat(chosen)]


def _update(
    x: torch.Tensor, labels: torch.Tensor, k: int, generator: torch.Generator
) -> torch.Tensor:
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=k).to(x.dtype)
    centres = sums / counts.clamp(min=1).unsqueeze(-1)
    empty = counts == 0
    if empty.any():  # reseed empty clusters on random points so all K codes stay usable
        idx = torch.randint(x.shape[0], (int(empty.sum()),), generator=generator, device=x.device)
        centres[empty] = x[idx]
    return centres


def _balanced_assign(x: torch.Tensor, c: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """OneRec's balanced assignment: clusters in random order each take their ceil(N/K) nearest
    still-unassigned points, so every cluster ends up the same size (the last ones take the rest)."""
    n, k = x.shape[0], c.shape[0]
    cap = -(-n // k)
    labels = torch.full((n,), -1, dtype=torch.long, device=x.device)
    d = sq_dists(x, c) + (x * x).sum(-1, keepdim=True)
    for j in torch.randperm(k, generator=generator, device=x.device).tolist():
        free = (labels < 0).nonzero().squeeze(-1)
        if free.numel() == 0:
            break
        take = free[d[free, j].topk(min(cap, free.numel()), largest=False).indices]
        labels[take] = j
    return labels


def kmeans(
    x: torch.Tensor,
    k: int,
    generator: torch.Generator,
    iters: int = 25,
    balanced: bool = False,
) -> torch.Tensor:
    """k centroids of the rows of x (Lloyd's algorithm from k-means++ seeds)."""
    if x.shape[0] < k:  # too few points for k distinct centres: sample with replacement
        x = x[torch.randint(x.shape[0], (k,), generator=generator, device=x.device)]
    centres = kmeans_pp(x, k, generator)
    for _ in range(iters):
        labels = _balanced_assign(x, centres, generator) if balanced else assign(x, centres)
        new = _update(x, labels, k, generator)
        if torch.equal(new, centres):
            break
        centres = new
    return centres
