"""hwnas-agent: the device-side profiling daemon of hwnas (stdlib + numpy + onnxruntime)."""

__version__ = "0.1.0"
