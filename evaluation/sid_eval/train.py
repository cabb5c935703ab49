"""Training and scoring of one Ranker: BCE with Adam, a fixed number of epochs, seeded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from .negatives import Examples


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count for a block, restored after (it is process-global)."""
    was = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(was)


def fit(model: nn.Module, data: Examples, epochs: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """Returns the mean training loss of each epoch. Plain Adam without weight decay: rows that no
    training example touches (unique-ID row 0) must stay exactly at their initialisation."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    item, hist, label = (torch.from_numpy(a) for a in (data.item, data.hist, data.label))
    loss_fn = nn.BCEWithLogitsLoss()
    history = []
    model.train()
    for _ in range(epochs):
        total, n = 0.0, 0
        for idx in torch.from_numpy(rng.permutation(len(data))).split(batch_size):
            loss = loss_fn(model(item[idx], hist[idx]), label[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(idx), n + len(idx)
        history.append(total / n)
    return history


@torch.no_grad()
def predict(model: nn.Module, data: Examples, batch_size: int = 16384) -> np.ndarray:
    """Probabilities [n]."""
    model.eval()
    item, hist = torch.from_numpy(data.item), torch.from_numpy(data.hist)
    out = [torch.sigmoid(model(item[s : s + batch_size], hist[s : s + batch_size])) for s in range(0, len(data), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)
