"""RQ-KMeans (Kuaishou OneRec): k-means on the embeddings, then on the residuals, level by level.

The result is an RQVAE with an identity encoder/decoder and the k-means centroids as codebooks,
so it exports to the same bundle and the service cannot tell the two methods apart.
"""

from __future__ import annotations

import torch

from .kmeans import assign, kmeans
from .rqvae import RQVAE


@torch.no_grad()
def fit_rqkmeans(
    x: torch.Tensor,
    levels: int,
    codebook_size: int,
    generator: torch.Generator,
    iters: int = 25,
    balanced: bool = False,
    beta: float = 0.25,
) -> RQVAE:
    model = RQVAE(x.shape[1], x.shape[1], [], levels, codebook_size, beta=beta, identity=True).to(
        x.device
    )
    residual = x
    for level in range(levels):
        centres = kmeans(residual, codebook_size, generator, iters=iters, balanced=balanced)
        model.quantizer.codebooks[level] = centres
        # Residuals follow nearest-code assignment (what serving computes), even when the
        # clusters were fitted balanced.
        residual = residual - centres[assign(residual, centres)]
    return model
