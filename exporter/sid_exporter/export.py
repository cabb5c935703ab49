"""Write the model bundle, the contract with the service: encoder.onnx + manifest.json.

The ONNX graph is built by hand with onnx.helper rather than traced: it is a handful of ops, we
choose each one to mirror RQVAE.codes() operation for operation (the parity argument below), it
needs neither the deprecated TorchScript exporter nor onnxscript, and the same weights always
give byte-identical ONNX.

Graph: embeddings float32 [B, D] -> (Gemm, Relu)* -> Cast float64 -> per level l:
    d = ||e||^2 - 2 * MatMul(r, E_l^T);  c_l = ArgMin(d);  r = r - Gather(E_l, c_l)
-> Concat -> codes int64 [B, L].

Parity: ||e||^2 is a constant computed by torch itself, so both sides use identical values;
2 * dot is exact in binary floating point; only the float32 MLP and the float64 dot products
round differently between torch and onnxruntime. In float64 the latter is ~1e-16 relative, so
codes can only disagree where two codes are tied to within the MLP's float32 rounding.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from .data import fingerprint
from .rqvae import INFER_DTYPE, RQVAE

FORMAT = "sidserve-bundle/1"
OPSET = 17
ONNX_FILE = "encoder.onnx"
MANIFEST_FILE = "manifest.json"
INPUT_NAME = "embeddings"
OUTPUT_NAME = "codes"


def model_version(model: RQVAE) -> str:
    """First 16 hex digits of sha256 over the weights (name, dtype, shape and bytes, sorted by
    name): the same weights always give the same version, whatever the export time."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def build_onnx(model: RQVAE, version: str = "") -> onnx.ModelProto:
    """The encoder plus the residual argmin over all levels, as one ONNX graph."""
    model = model.cpu().eval()
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: torch.Tensor) -> str:
        inits.append(numpy_helper.from_array(value.detach().cpu().numpy(), name))
        return name

    h = INPUT_NAME
    for i, layer in enumerate(model.encoder):
        if isinstance(layer, nn.Linear):
            w, b = const(f"enc{i}.weight", layer.weight), const(f"enc{i}.bias", layer.bias)
            nodes.append(helper.make_node("Gemm", [h, w, b], [f"enc{i}"], transB=1))  # = F.linear
        elif isinstance(layer, nn.ReLU):
            nodes.append(helper.make_node("Relu", [h], [f"enc{i}"]))
        else:
            raise TypeError(f"cannot export encoder layer {layer!r}")
        h = f"enc{i}"
    nodes.append(helper.make_node("Cast", [h], ["r0"], to=TensorProto.DOUBLE))

    codebooks = model.quantizer.codebooks.detach().to(INFER_DTYPE)
    two = const("two", torch.tensor(2.0, dtype=INFER_DTYPE))
    level_codes = []
    for l, cb in enumerate(codebooks):
        norms = const(f"cb{l}.sq_norm", (cb * cb).sum(-1))  # exactly torch's values
        cb_t = const(f"cb{l}.T", cb.T.contiguous())
        cb_rows = const(f"cb{l}", cb)
        nodes += [
            helper.make_node("MatMul", [f"r{l}", cb_t], [f"dot{l}"]),
            helper.make_node("Mul", [two, f"dot{l}"], [f"dot2_{l}"]),
            helper.make_node("Sub", [norms, f"dot2_{l}"], [f"dist{l}"]),
            # select_last_index=0: first minimum on ties, as torch.argmin.
            helper.make_node(
                "ArgMin", [f"dist{l}"], [f"c{l}"], axis=1, keepdims=1, select_last_index=0
            ),
        ]
        if l + 1 < len(codebooks):
            nodes += [
                helper.make_node(
                    "Squeeze", [f"c{l}", const(f"axis1_{l}", torch.tensor([1]))], [f"idx{l}"]
                ),
                helper.make_node("Gather", [cb_rows, f"idx{l}"], [f"e{l}"], axis=0),
                helper.make_node("Sub", [f"r{l}", f"e{l}"], [f"r{l + 1}"]),
            ]
        else:
            inits.pop()  # the last level's rows are never gathered
        level_codes.append(f"c{l}")
    nodes.append(helper.make_node("Concat", level_codes, [OUTPUT_NAME], axis=1))

    d_in, levels = model.hparams["input_dim"], model.quantizer.levels
    graph = helper.make_graph(
        nodes,
        "sid_encoder",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", d_in])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.INT64, ["batch", levels])],
        initializer=inits,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sid-exporter"
    )
    proto.ir_version = 8  # opset 17's IR version: loadable by onnxruntime >= 1.13
    helper.set_model_props(proto, {"format": FORMAT, "model_version": version})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_bundle(
    model: RQVAE,
    out_dir: str | Path,
    train_x: np.ndarray | Mapping[str, Any],
    metrics: Mapping[str, Any],
) -> Path:
    """Write encoder.onnx and manifest.json to out_dir; returns out_dir.

    train_x: the training embeddings, or their precomputed `data.fingerprint()` (from a checkpoint).
    The manifest is written last, so a directory with a manifest always has its ONNX file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    version = model_version(model)
    data = bytes(build_onnx(model, version).SerializeToString())
    (out / ONNX_FILE).write_bytes(data)
    hp = model.hparams
    manifest = {
        "format": FORMAT,
        "model_version": version,
        "method": "rqkmeans" if hp["identity"] else "rqvae",
        "input_dim": hp["input_dim"],
        "latent_dim": hp["latent_dim"],
        "levels": hp["levels"],
        "codebook_size": hp["codebook_size"],
        "beta": hp["beta"],
        "opset": OPSET,
        "onnx_file": ONNX_FILE,
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "onnx_input": INPUT_NAME,
        "onnx_output": OUTPUT_NAME,
        "training_data": dict(train_x) if isinstance(train_x, Mapping) else fingerprint(train_x),
        "training_metrics": dict(metrics),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return out
