"""Export prompt bundles for production: compiled KV prefix + ONNX decoder + ONNX Runtime predictor."""
