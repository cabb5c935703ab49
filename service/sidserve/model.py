"""The model bundle (encoder.onnx + manifest.json from the exporter) and its onnxruntime session.

Loading verifies the bundle before anything is served: its format, the ONNX file's sha256
against the manifest, and that the graph's input/output names and shapes match what the
manifest declares. A bundle that fails any check is refused with a message saying which.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

BUNDLE_FORMAT = "sidserve-bundle/1"
MANIFEST_FILE = "manifest.json"
_REQUIRED = (
    "format", "model_version", "input_dim", "levels", "codebook_size",
    "onnx_file", "onnx_sha256", "onnx_input", "onnx_output",
)  # fmt: skip


class BundleError(ValueError):
    """The bundle directory is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class SidModel:
    """A loaded, verified bundle. `encode` is thread-safe (onnxruntime sessions are)."""

    path: Path
    manifest: dict[str, Any]
    session: ort.InferenceSession

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    @property
    def input_dim(self) -> int:
        return self.manifest["input_dim"]

    @property
    def levels(self) -> int:
        return self.manifest["levels"]

    @property
    def codebook_size(self) -> int:
        return self.manifest["codebook_size"]

    @classmethod
    def load(cls, path: str | Path, intra_op_threads: int = 1, spinning: bool = False) -> SidModel:
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST_FILE).read_text())
        except FileNotFoundError:
            raise BundleError(f"{path}: no {MANIFEST_FILE} (is this a model bundle directory?)") from None
        except json.JSONDecodeError as e:
            raise BundleError(f"{path / MANIFEST_FILE}: not valid JSON: {e}") from None
        missing = [k for k in _REQUIRED if k not in manifest]
        if missing:
            raise BundleError(f"{path / MANIFEST_FILE}: missing fields {missing}")
        if manifest["format"] != BUNDLE_FORMAT:
            raise BundleError(f"{path}: format {manifest['format']!r}, this service reads {BUNDLE_FORMAT!r}")

        onnx_path = path / manifest["onnx_file"]
        try:
            data = onnx_path.read_bytes()
        except FileNotFoundError:
            raise BundleError(f"{path}: manifest names {manifest['onnx_file']!r}, which is missing") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest["onnx_sha256"]:
            raise BundleError(
                f"{onnx_path}: sha256 {digest} does not match the manifest's onnx_sha256 "
                f"{manifest['onnx_sha256']} (corrupted or mixed-up bundle)"
            )

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        # Spinning threads busy-wait for work: bad when several workers share few cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])

        model = cls(path, manifest, session)
        model._check_signature()
        return model

    def _check_signature(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        m = self.manifest
        if [i.name for i in inputs] != [m["onnx_input"]] or [o.name for o in outputs] != [m["onnx_output"]]:
            raise BundleError(
                f"{self.path}: graph has inputs {[i.name for i in inputs]} and outputs "
                f"{[o.name for o in outputs]}; the manifest declares {m['onnx_input']!r} -> {m['onnx_output']!r}"
            )
        (inp,), (out,) = inputs, outputs
        if inp.type != "tensor(float)" or out.type != "tensor(int64)":
            raise BundleError(f"{self.path}: expected float32 input and int64 output, got {inp.type} -> {out.type}")
        if inp.shape[-1] != self.input_dim or out.shape[-1] != self.levels:
            raise BundleError(
                f"{self.path}: graph shapes {inp.shape} -> {out.shape} disagree with the manifest's "
                f"input_dim={self.input_dim}, levels={self.levels}"
            )

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """Semantic IDs of a batch: float32 [B, D] -> int64 [B, L], each code in [0, K).

        CPU-bound: call it off the event loop (a worker thread), not in an async handler.
        """
        codes = self.session.run(None, {self.manifest["onnx_input"]: embeddings})[0]
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise BundleError(f"{self.path}: encoder produced codes outside [0, {self.codebook_size})")
        return codes
