"""The quantization engine: calibration, encodings, QDQ export."""
