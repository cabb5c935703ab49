"""Reading a model bundle with onnxruntime only (no torch): what report and verify consume, and a
reference for how the service loads one."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

FORMAT = "sidserve-bundle/1"


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]
    session: ort.InferenceSession

    def codes(self, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Semantic IDs int64 [N, L] of float32 embeddings [N, D]."""
        name = self.manifest["onnx_input"]
        parts = [
            self.session.run(None, {name: x[i : i + batch_size]})[0]
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.manifest["levels"]), np.int64)


def load_bundle(path: str | Path, threads: int | None = None) -> Bundle:
    """Open a bundle directory; checks the format tag and the ONNX file's sha256."""
    path = Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{path}: unsupported bundle format {manifest.get('format')!r}, expected {FORMAT!r}"
        )
    data = (path / manifest["onnx_file"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["onnx_sha256"]:
        raise ValueError(
            f"{path}: {manifest['onnx_file']} does not match the manifest's onnx_sha256"
        )
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return Bundle(path, manifest, session)
