"""Compression knobs as plug-ins (base.py: the contract and registry; candidate.py: the
Candidate record; one module per knob); importing the package registers the built-in knobs."""

# imported in this order, the knobs' sections are listed in it (width first)
from hwnas.knobs import width, pruning, precision, heads, mlp, calibration
from hwnas.knobs import llm  # the language-model family
from hwnas.knobs.base import (Knob, ModelParts, knob, load_plugins, register, registered,
                              unregister)
from hwnas.knobs.candidate import Candidate

__all__ = ["Candidate", "Knob", "ModelParts", "calibration", "heads", "knob", "llm",
           "load_plugins", "mlp", "precision", "pruning", "register", "registered", "unregister",
           "width"]
