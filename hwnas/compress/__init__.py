"""Compressions of a trained model: width and pruning (torch-pruning), fine-tune, precision."""
