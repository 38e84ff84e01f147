"""Freed heap memory goes back to the OS when the batched trainer asks (glibc's malloc_trim)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from fedsim.learning.memory import _malloc_trim, release_free_memory


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(
    platform.system() != "Linux" or _malloc_trim() is None, reason="needs glibc on Linux"
)
def test_release_returns_freed_heap_pages():
    # 3,000 blocks of 64 KB (below glibc's mmap threshold: they live on the heap); freeing every
    # other one leaves ~94 MB of holes that stay resident until trimmed.
    blocks = [torch.ones(16_384) for _ in range(3_000)]
    del blocks[::2]
    before = resident_mb()
    assert release_free_memory() is True
    assert before - resident_mb() > 40
    assert len(blocks) == 1_500 and float(blocks[0].sum()) == 16_384  # survivors intact
