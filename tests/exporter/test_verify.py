"""verify's parity reference is each row alone, and its batch-invariance check can fail."""

import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from sid_exporter.bundle import Bundle, load_bundle
from sid_exporter.train import load_checkpoint
from sid_exporter.verify import agreement, batch_invariance, pad_with_jitter


class ShiftedTorch(torch.nn.Module):
    """The trained model, except that every third row of its input gets the next code at level 1,
    either in every batch or (batch_dependent) only in batches of more than one row: an
    exaggerated stand-in for torch's batch-dependent float32 matmul."""

    def __init__(self, model: torch.nn.Module, batch_dependent: bool) -> None:
        super().__init__()
        self.model, self.batch_dependent = model, batch_dependent

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        codes = self.model.codes(x)
        if len(x) > 1 or not self.batch_dependent:
            codes[::3, 0] = (codes[::3, 0] + 1) % self.model.quantizer.codebook_size
        return codes


def test_agreement_takes_each_row_alone_as_the_reference(
    sid_bundle, sid_bundle_data, sid_bundle_checkpoint
):
    x = pad_with_jitter(sid_bundle_data[0], 3_000)
    model, _, _ = load_checkpoint(sid_bundle_checkpoint)
    bundle = load_bundle(sid_bundle)

    honest = agreement(model, bundle, x)
    assert honest["agree"] == 3_000 and honest["torch_batch_dependent_rows"] == 0

    # Codes that differ only inside torch's batch are torch's batch dependence, not a mismatch.
    batch_only = agreement(ShiftedTorch(model, batch_dependent=True), bundle, x)
    assert batch_only["agree"] == 3_000 and batch_only["torch_batch_dependent_rows"] == 1_000

    # Codes that differ alone too are a mismatch (a one-row batch shifts its row 0).
    always = agreement(ShiftedTorch(model, batch_dependent=False), bundle, x)
    assert always["agree"] == 2_000 and always["torch_batch_dependent_rows"] == 0
    assert always["first_differing_rows"] == list(range(0, 30, 3))


def mean_centred_argmax_bundle(dim: int) -> Bundle:
    """A graph whose code for a row depends on the rest of the batch: argmax of x - mean(batch)."""
    nodes = [
        helper.make_node("ReduceMean", ["embeddings"], ["mean"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["embeddings", "mean"], ["centred"]),
        helper.make_node("ArgMax", ["centred"], ["codes"], axis=1, keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "batch_dependent",
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("codes", TensorProto.INT64, ["batch", 1])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return Bundle(None, {"onnx_input": "embeddings", "levels": 1}, session)


def test_batch_invariance_holds_for_the_exported_graph_and_catches_one_that_is_not(
    sid_bundle, sid_bundle_data
):
    x = pad_with_jitter(sid_bundle_data[0], 3_000)
    result = batch_invariance(load_bundle(sid_bundle), x)
    assert result == {"n": 3_000, "agree": 3_000, "first_differing_rows": []}

    broken = batch_invariance(mean_centred_argmax_bundle(x.shape[1]), x)
    assert broken["agree"] < 3_000 and broken["first_differing_rows"]
