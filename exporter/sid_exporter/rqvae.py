"""RQ-VAE: MLP encoder, residual quantizer (L levels x K codes), MLP decoder.

The Semantic ID of x is (c_1, ..., c_L), coarse to fine: r_1 = E(x), c_l = argmin_k ||r_l - e^l_k||^2,
r_{l+1} = r_l - e^l_{c_l}. RQ-KMeans is the same module with an empty (identity) encoder and
decoder, so both export to the same graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import torch
from torch import nn

# Serving-time assignment runs in float64 (in torch and in the ONNX graph alike): the float32
# MLP of torch and of onnxruntime agree to ~1e-7, and in float64 the distance comparison adds no
# rounding of its own, so the two argmins can only differ on codes tied to ~1e-7. See export.py.
INFER_DTYPE = torch.float64


def mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last); empty for a single dim."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(pairwise(dims)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def nearest(r: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """argmin_k ||r - e_k||^2 as argmin_k (||e_k||^2 - 2 r.e_k): ||r||^2 is constant per row.

    The ONNX graph computes exactly this expression with the same operation order.
    """
    return ((codebook * codebook).sum(-1) - 2.0 * r @ codebook.T).argmin(-1)


class ResidualQuantizer(nn.Module):
    def __init__(self, levels: int, codebook_size: int, dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.beta = beta
        self.codebooks = nn.Parameter(torch.randn(levels, codebook_size, dim) * 0.01)
        # Not persistent: usage is training bookkeeping and must not enter the weights' hash.
        self.register_buffer(
            "usage", torch.zeros(levels, codebook_size, dtype=torch.long), persistent=False
        )

    @property
    def levels(self) -> int:
        return self.codebooks.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.codebooks.shape[1]

    def forward(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(straight-through z_hat, codes [B, L], quantization loss, detached residual per level)."""
        residual, quantized = z, torch.zeros_like(z)
        codes, residuals = [], []
        loss = z.new_zeros(())
        for level, codebook in enumerate(self.codebooks):
            idx = nearest(residual.detach(), codebook.detach())
            e = codebook[idx]
            # Commitment pulls the encoder toward its codes; the codebook term pulls codes to data.
            loss = loss + self.beta * (residual - e.detach()).pow(2).sum(-1).mean()
            loss = loss + (residual.detach() - e).pow(2).sum(-1).mean()
            codes.append(idx)
            residuals.append(residual.detach())
            quantized = quantized + e.detach()
            residual = residual - e.detach()  # later levels must not move earlier codebooks
        z_hat = (
            z + (quantized - z).detach()
        )  # straight-through: decoder gradient goes to the encoder
        return z_hat, torch.stack(codes, -1), loss, residuals

    @torch.no_grad()
    def record_usage(self, codes: torch.Tensor) -> None:
        """Count code use of a training batch [B, L], for the dead-code reset."""
        for level in range(self.levels):
            self.usage[level] += torch.bincount(codes[:, level], minlength=self.codebook_size)

    @torch.no_grad()
    def reset_dead_codes(self, residuals: list[torch.Tensor], generator: torch.Generator) -> int:
        """Move codes unused since the last call onto residuals of random batch items (Google A.1)."""
        n_reset = 0
        for level, r in enumerate(residuals):
            dead = (self.usage[level] == 0).nonzero().squeeze(-1)
            if dead.numel():
                pick = torch.randint(
                    r.shape[0], (dead.numel(),), generator=generator, device=r.device
                )
                self.codebooks[level, dead] = r[pick].to(self.codebooks.dtype)
                n_reset += dead.numel()
        self.usage.zero_()
        return n_reset


class RQVAE(nn.Module):
    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        hidden: Sequence[int],
        levels: int,
        codebook_size: int,
        beta: float = 0.25,
        identity: bool = False,
    ) -> None:
        super().__init__()
        if identity and latent_dim != input_dim:
            raise ValueError(
                f"identity encoder needs latent_dim == input_dim ({input_dim}), got {latent_dim}"
            )
        # Constructor arguments, kept so a checkpoint can rebuild the module.
        self.hparams: dict[str, Any] = {
            "input_dim": input_dim,
            "latent_dim": latent_dim,
            "hidden": list(hidden),
            "levels": levels,
            "codebook_size": codebook_size,
            "beta": beta,
            "identity": identity,
        }
        dims = [input_dim] if identity else [input_dim, *hidden, latent_dim]
        self.encoder = mlp(dims)
        self.decoder = mlp(dims[::-1])
        self.quantizer = ResidualQuantizer(levels, codebook_size, latent_dim, beta)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(x_hat, codes, losses) with losses = {"loss", "recon", "quant"}."""
        z_hat, codes, quant, _ = self.quantizer(self.encoder(x))
        x_hat = self.decoder(z_hat)
        recon = (x - x_hat).pow(2).sum(-1).mean()
        return x_hat, codes, {"loss": recon + quant, "recon": recon, "quant": quant}

    def residuals(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Detached residual r_l at every level (for codebook init and dead-code resets)."""
        return self.quantizer(self.encoder(x))[3]

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Semantic IDs [B, L] (int64), computed exactly as the exported ONNX graph does."""
        r = self.encoder(x.to(self.quantizer.codebooks.dtype)).to(INFER_DTYPE)
        out = []
        for codebook in self.quantizer.codebooks.to(INFER_DTYPE):
            idx = nearest(r, codebook)
            out.append(idx)
            r = r - codebook[idx]
        return torch.stack(out, -1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x_hat from the serving-time codes: decoder(sum_l e^l_{c_l})."""
        codes = self.codes(x)
        cb = self.quantizer.codebooks
        z_hat = sum(cb[level, codes[:, level]] for level in range(cb.shape[0]))
        return self.decoder(z_hat)
