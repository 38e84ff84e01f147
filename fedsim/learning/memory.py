"""Handing freed heap memory back to the operating system between flushes.

glibc's allocator keeps freed blocks for reuse, and after large blocks are freed it raises its
``mmap`` threshold, so later multi-megabyte tensors (parameter stacks, the results waiting for their
arrival time) are carved out of the heap too. A run that trains hundreds of jobs per flush then
leaves hundreds of megabytes of free but resident holes in the heap, and its peak RSS grows well
past what it holds. ``malloc_trim(0)`` returns every whole free page to the kernel: measured in
``benchmarks/bench_memory.py`` (docs/performance.md). On other C libraries this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Give the heap's free pages back to the OS (glibc); True if anything was released."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def available_memory_bytes() -> int | None:
    """Memory the OS can give this process now without swapping (``MemAvailable`` on Linux, else
    free physical pages); None where neither is known."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
