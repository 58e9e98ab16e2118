"""Qualcomm HTP through onnxruntime-qnn: offline preparation and the emulator."""
