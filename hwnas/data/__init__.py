"""Task data (task.py): splits that stream batches, built-ins, image folders, user entry points."""

from __future__ import annotations

from hwnas.data.task import (  # noqa: F401
    ArraySplit,
    Batch,
    Preprocess,
    Split,
    TaskData,
    array_split,
    held_out,
    load_task,
    split_train_validation,
)

__all__ = ['ArraySplit', 'Batch', 'Preprocess', 'Split', 'TaskData', 'array_split',
           'held_out', 'load_task', 'split_train_validation']
