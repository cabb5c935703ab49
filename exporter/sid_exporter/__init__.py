"""sid_exporter: train a frozen Semantic-ID quantizer (RQ-VAE or RQ-KMeans) on content embeddings,
export it as a model bundle (encoder.onnx + manifest.json) for the sidserve service, prove
torch/onnxruntime parity and report SID quality. CLI: `sid-exporter` (cli.py).

Modules import lazily on purpose: bundle.py and report.py need only numpy and onnxruntime, so
they also work where torch is not installed.
"""
