"""hwnas: hardware-aware compression search, measured on the real device."""

__version__ = "0.1.0"
