"""Graph rewrites on ONNX models (normalisation before quantization, equalization)."""
