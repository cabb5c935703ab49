"""The ranking model, identical for every variant except how an item becomes a vector.

score(user, candidate) = MLP([c, mean(h), attn(h | c), c * attn(h | c)]), where c is the
candidate's vector and h the vectors of the user's history items; attn is DIN-style target
attention (softmax of h . c). All item vectors, candidate and history alike, come from the same
representation, so the variants differ in exactly one place.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .variants import Variant


class Ranker(nn.Module):
    def __init__(self, variant: Variant, content: np.ndarray, dim: int = 32, hidden: tuple[int, ...] = (64, 32)):
        super().__init__()
        self.dim = dim
        if variant.rows is None:
            self.register_buffer("content", torch.from_numpy(content))
            self.proj = nn.Linear(content.shape[1], dim)
        else:
            self.register_buffer("rows", torch.from_numpy(variant.rows))
            self.table = nn.Embedding(variant.num_rows, dim)
            nn.init.normal_(self.table.weight, std=0.1)
        layers: list[nn.Module] = []
        width = 4 * dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def item_vectors(self) -> torch.Tensor:
        """[n_items + 1, dim]: every catalog item's vector, plus a zero row last for history padding
        (index -1). Computing all items once per batch is cheaper than per history slot."""
        if hasattr(self, "proj"):
            v = self.proj(self.content)
        else:
            mask = (self.rows >= 0).unsqueeze(-1)
            v = (self.table(self.rows.clamp(min=0)) * mask).sum(1)  # sum-pool the item's tokens
        return torch.cat([v, v.new_zeros(1, self.dim)])

    def forward(self, cand: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        """Logits [B] for candidates [B] given histories [B, M] (-1 = padding)."""
        v = self.item_vectors()
        c, h = v[cand], v[hist]  # index -1 is the zero padding row
        valid = hist >= 0
        mean = h.sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        logits = (h @ c.unsqueeze(-1)).squeeze(-1) / self.dim**0.5
        att = torch.softmax(logits.masked_fill(~valid, -1e9), dim=1) * valid  # all-padding rows -> 0
        a = (att.unsqueeze(-1) * h).sum(1)
        return self.mlp(torch.cat([c, mean, a, c * a], dim=1)).squeeze(-1)
