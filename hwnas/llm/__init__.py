"""Small causal language models: load, prune, quantise, export to onnxruntime-genai, evaluate."""
