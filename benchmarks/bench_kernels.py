"""The kernel figures behind the CNN's limits on a CPU (docs/performance.md, "Batched vs sequential").

    OMP_NUM_THREADS=1 python benchmarks/bench_kernels.py

Prints, on one torch thread:
- max-pooling 2×2 of ``[32, 1600, 8, 8]`` (vmap's layout for 100 clients' first CNN layer) in the
  contiguous and the channels-last format;
- the single-core float32 matrix-multiply peak (1024³);
- the stacked digits CNN's two grouped convolutions (18 clients, 32 samples each, channels-last):
  forward and forward+backward GFLOP/s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.nn import functional as F


def per_call_ms(f: Callable[[], object], repeats: int = 50) -> float:
    for _ in range(5):
        f()
    started = time.perf_counter()
    for _ in range(repeats):
        f()
    return (time.perf_counter() - started) / repeats * 1e3


def conv_rates(n: int, b: int, c_in: int, c_out: int, side: int) -> tuple[float, float]:
    """GFLOP/s of a grouped 5×5 'same' convolution (forward; forward + backward)."""
    x = torch.randn(b, n * c_in, side, side).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(c_in > 1)  # the first layer's input is data: no input gradient
    w = torch.randn(n * c_out, c_in, 5, 5, requires_grad=True)
    flops = 2 * b * n * c_out * side * side * c_in * 25
    forward = per_call_ms(lambda: F.conv2d(x, w, padding=2, groups=n))

    def both() -> None:
        out = F.conv2d(x, w, padding=2, groups=n)
        out.backward(torch.ones_like(out))

    backward_flops = flops * (2 if c_in > 1 else 1)
    return flops / forward / 1e6, (flops + backward_flops) / per_call_ms(both) / 1e6


def main() -> None:
    torch.set_num_threads(1)
    x = torch.randn(32, 1600, 8, 8)
    contiguous = per_call_ms(lambda: F.max_pool2d(x, 2))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    channels_last = per_call_ms(lambda: F.max_pool2d(x_cl, 2))
    print(f"max_pool2d [32, 1600, 8, 8]: contiguous {contiguous:.2f} ms, "
          f"channels-last {channels_last:.2f} ms ({contiguous / channels_last:.1f}x)")  # fmt: skip
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    print(
        f"sgemm 1024^3, one thread: {2 * 1024**3 / per_call_ms(lambda: a @ b, 20) / 1e6:.0f} GFLOP/s"
    )
    for name, c_in, c_out, side in (
        ("conv1 1->16 on 8x8", 1, 16, 8),
        ("conv2 16->32 on 4x4", 16, 32, 4),
    ):
        forward, both = conv_rates(18, 32, c_in, c_out, side)
        print(f"grouped {name}, 18 clients x 32 samples: forward {forward:.0f} GFLOP/s, "
              f"forward+backward {both:.0f} GFLOP/s")  # fmt: skip


if __name__ == "__main__":
    main()
