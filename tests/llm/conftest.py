"""The language-model tests run torch on one thread: their models are tiny, and two threads
on a shared two-core machine spend more time waiting for each other than computing (a healing
step of the tiny decoder: 0.04 s on one thread, 0.77 s on two under load)."""

from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
