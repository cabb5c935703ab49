"""The shared sid_bundle fixture honours the bundle contract the service relies on."""

import hashlib
import json

import numpy as np
import onnxruntime as ort


def test_sid_bundle_contract(sid_bundle, sid_bundle_data):
    x, ids = sid_bundle_data
    manifest = json.loads((sid_bundle / "manifest.json").read_text())
    assert manifest["format"] == "sidserve-bundle/1"
    assert (manifest["input_dim"], manifest["levels"], manifest["codebook_size"]) == (32, 3, 16)
    onnx_bytes = (sid_bundle / manifest["onnx_file"]).read_bytes()
    assert hashlib.sha256(onnx_bytes).hexdigest() == manifest["onnx_sha256"]
    assert manifest["training_data"]["n_items"] == len(ids) == x.shape[0]
    assert manifest["training_data"]["fingerprint"] == hashlib.sha256(x.tobytes()).hexdigest()[:16]
    assert len(manifest["model_version"]) == 16

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    [inp], [out] = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, out.name, out.type) == (
        "embeddings",
        "tensor(float)",
        "codes",
        "tensor(int64)",
    )
    for batch in (1, 7, 2000):  # dynamic batch axis
        codes = sess.run(None, {"embeddings": x[:batch]})[0]
        assert codes.shape == (batch, 3) and codes.dtype == np.int64
        assert codes.min() >= 0 and codes.max() < 16
