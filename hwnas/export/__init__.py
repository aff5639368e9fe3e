"""Export of compressed models to the exact ONNX bytes a device runs."""
