"""Training entry point for both quantizers, and the checkpoint that hands a model to `export`."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import fingerprint, validate_embeddings
from .kmeans import kmeans
from .rqkmeans import fit_rqkmeans
from .rqvae import RQVAE

METHODS = ("rqvae", "rqkmeans")
log = logging.getLogger("sid_exporter")


@dataclass
class TrainConfig:
    """Defaults suit small public corpora (thousands to ~100k items). The papers use L=8, K=2048
    (Google, YouTube scale) and L=3 or 6, K=2048 (Meta); OneRec's RQ-KMeans uses 3 x 8192."""

    method: str = "rqvae"  # "rqvae" or "rqkmeans"
    levels: int = 3  # L: codes per Semantic ID
    codebook_size: int = 256  # K: codes per level
    latent_dim: int = 32  # D' (rqvae; rqkmeans quantizes the input itself, D' = D)
    hidden: tuple[int, ...] = (512, 256, 128)  # encoder widths; the decoder mirrors them
    epochs: int = 200
    max_steps: int | None = 3000  # caps compute on large corpora: stop at whichever comes first
    batch_size: int = 512
    lr: float = 1e-3  # AdamW, constant (cosine decay measured worse: recon 0.372 vs 0.329 on DEV)
    beta: float = 0.25  # commitment weight
    seed: int = 0
    dead_code_window: int = 50  # steps; codes unused over a window are reset
    init_samples: int = 16384  # items of the first batch whose residuals seed the codebooks
    kmeans_iters: int = 25
    balanced: bool = False  # rqkmeans: equal-size clusters (OneRec)
    device: str = "auto"  # "auto" picks CUDA when present
    threads: int | None = (
        None  # CPU threads; None keeps torch's default (small models: 1 is fastest)
    )

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in (
            "levels",
            "codebook_size",
            "latent_dim",
            "epochs",
            "batch_size",
            "dead_code_window",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def deterministic(
    seed: int, device: torch.device, threads: int | None = None
) -> Iterator[torch.Generator]:
    """Seeded generator, torch's deterministic mode and the thread count, all restored on exit
    (they are process-global).

    On CPU, same seed + data + thread count gives byte-identical weights. CUDA kernels such as
    index_add_ have no deterministic variant, so there it only warns.
    """
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was, was_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    was_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        yield torch.Generator(device=device).manual_seed(seed)
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
        torch.set_num_threads(was_threads)


def train(x: np.ndarray, config: TrainConfig) -> tuple[RQVAE, dict[str, Any]]:
    """Fit a quantizer on embeddings x (N x D float32). Returns the model (on CPU, eval mode)
    and metrics measured on all of x with serving-time codes."""
    x = validate_embeddings(x, "training embeddings")
    device = resolve_device(config.device)
    start = time.perf_counter()
    with deterministic(config.seed, device, config.threads) as gen:
        xt = torch.from_numpy(x).to(device)
        if config.method == "rqkmeans":
            model = fit_rqkmeans(
                xt,
                config.levels,
                config.codebook_size,
                gen,
                config.kmeans_iters,
                config.balanced,
                config.beta,
            )
            extra: dict[str, Any] = {}
        else:
            model, extra = _train_rqvae(xt, config, gen)
    model = model.cpu().eval()
    metrics = {
        **evaluate(model, x),
        **extra,
        "train_seconds": round(time.perf_counter() - start, 3),
        "device": str(device),
        "torch_threads": config.threads or torch.get_num_threads(),
        "config": asdict(config),
    }
    return model, metrics


def _train_rqvae(
    x: torch.Tensor, config: TrainConfig, gen: torch.Generator
) -> tuple[RQVAE, dict[str, Any]]:
    n = x.shape[0]
    model = RQVAE(
        x.shape[1],
        config.latent_dim,
        config.hidden,
        config.levels,
        config.codebook_size,
        config.beta,
    ).to(x.device)
    t0 = time.perf_counter()
    _init_codebooks(model, x, config, gen)
    log.info(
        "k-means codebook init on %d items: %.1fs",
        min(n, config.init_samples),
        time.perf_counter() - t0,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    model.train()
    step, n_reset, history = 0, 0, []
    start, log_every = time.perf_counter(), max(1, total // 20)
    while step < total:
        for batch in torch.randperm(n, generator=gen, device=x.device).split(config.batch_size):
            _, codes, losses = model(x[batch])
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            model.quantizer.record_usage(codes)
            step += 1
            if step % config.dead_code_window == 0 and step < total:
                # Residuals under the current weights, so reset codes land where the data now is.
                with torch.no_grad():
                    n_reset += model.quantizer.reset_dead_codes(model.residuals(x[batch]), gen)
            if step % steps_per_epoch == 0 or step == total:
                history.append(round(losses["loss"].item(), 6))
            if step % log_every == 0:
                log.info(
                    "step %d/%d loss %.4f recon %.4f resets %d (%.0fs)",
                    step,
                    total,
                    losses["loss"].item(),
                    losses["recon"].item(),
                    n_reset,
                    time.perf_counter() - start,
                )
            if step >= total:
                break
    return model, {
        "steps": step,
        "epochs": round(step / steps_per_epoch, 2),
        "dead_code_resets": n_reset,
        "loss_history": history[-20:],
    }


@torch.no_grad()
def _init_codebooks(
    model: RQVAE, x: torch.Tensor, config: TrainConfig, gen: torch.Generator
) -> None:
    """k-means on the residuals of a large first batch, level by level (avoids early collapse)."""
    sample = x[torch.randperm(x.shape[0], generator=gen, device=x.device)[: config.init_samples]]
    r = model.encoder(sample)
    for level in range(config.levels):
        centres = kmeans(r, config.codebook_size, gen, iters=config.kmeans_iters)
        model.quantizer.codebooks[level] = centres
        r = r - centres[((centres * centres).sum(-1) - 2 * r @ centres.T).argmin(-1)]


@torch.no_grad()
def evaluate(model: RQVAE, x: np.ndarray) -> dict[str, Any]:
    """Reconstruction and code-usage figures of a trained model on x (serving-time codes)."""
    model = model.eval()
    xt = torch.from_numpy(x).to(next(model.parameters()).device)
    codes = model.codes(xt)
    x_hat = model.reconstruct(xt)
    err2 = (xt - x_hat).pow(2).sum(-1)
    norm2 = xt.pow(2).sum(-1)
    k = model.quantizer.codebook_size
    used = [int(torch.unique(codes[:, level]).numel()) for level in range(codes.shape[1])]
    _, counts = torch.unique(codes, dim=0, return_counts=True)
    return {
        "recon_mse": float(err2.mean()),  # mean over items of ||x - x_hat||^2
        "recon_rel_error": float(
            (err2.sqrt() / norm2.sqrt().clamp(min=1e-12)).mean()
        ),  # mean ||x-x_hat||/||x||
        "recon_rel_sq": float(err2.sum() / norm2.sum()),  # sum ||x-x_hat||^2 / sum ||x||^2
        "utilization": [u / k for u in used],
        "unique_sid_fraction": float((counts == 1).sum()) / x.shape[0],
    }


def save_checkpoint(
    path: str | Path, model: RQVAE, config: TrainConfig, metrics: dict[str, Any], x: np.ndarray
) -> Path:
    """Everything `export` needs: weights, how to rebuild the module, metrics, data fingerprint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "hparams": model.hparams,
            "state_dict": model.state_dict(),
            "config": asdict(config),
            "metrics": metrics,
            "training_data": fingerprint(x),
        },
        path,
    )
    return path


def load_checkpoint(path: str | Path) -> tuple[RQVAE, dict[str, Any], dict[str, Any]]:
    """(model in eval mode on CPU, metrics, training_data fingerprint)."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = RQVAE(**ckpt["hparams"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt["metrics"], ckpt["training_data"]
