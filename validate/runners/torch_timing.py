"""Time steps on a GPU and measure the device's roofline ceilings, for the torch GPU runner.

The runner (``torch_gpu.py``) builds the model and turns probes into measurements; this module holds
how a step is timed (CUDA events, a captured CUDA graph, a host clock on CPU) and what the hardware
could do at best: copy bandwidth and matmul rate, measured once, and the bandwidth and compute floors
each measurement is compared with. torch is imported inside the functions (or passed in), so
importing this module needs no torch.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DeviceCeilings:
    """What was measured once per runner: bandwidth, matmul rate, memory after weights."""

    copy_bytes_per_s: float
    matmul_flops_per_s: float
    kv_capacity_tokens: int
    name: str
    software: dict[str, str] = field(default_factory=dict)


def measure_device(torch: Any, transformers: Any, device: str, dtype: Any, kv_bytes_per_token: int,
                   kv_reserve_fraction: float) -> DeviceCeilings:  # fmt: skip
    """Copy bandwidth and matmul rate of ``device``; KV tokens that fit in free memory less the reserve."""
    n = (1 << 30) if device.startswith("cuda") else (64 << 20)
    m = 8192 if device.startswith("cuda") else 512
    copy_ms = time_once_ms(lambda: torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255),
                           lambda src, dst: dst.copy_(src), device)  # fmt: skip
    mm_ms = time_once_ms(lambda: torch.randn(m, m, device=device, dtype=dtype), lambda a, b: a @ b, device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(torch.device(device))
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        page = os.sysconf("SC_PAGE_SIZE")
        free, total = os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
        name = f"cpu {platform.machine()} ({os.cpu_count()} cores)"
    usable = free - kv_reserve_fraction * total
    software = {"torch": torch.__version__, "transformers": transformers.__version__,
                "cuda": str(torch.version.cuda), "python": platform.python_version(), "gpu": name}  # fmt: skip
    return DeviceCeilings(2 * n / (copy_ms / 1e3), 2 * m**3 / (mm_ms / 1e3),
                          max(0, int(usable // kv_bytes_per_token)), name, software)  # fmt: skip


def roofline_floors(ms: float, bytes_moved: int, flops: float, dev: DeviceCeilings) -> dict[str, Any]:
    """Bandwidth and compute floors of one step of ``ms``, and its ratio to each."""
    bw_floor_ms = bytes_moved / dev.copy_bytes_per_s * 1e3
    compute_floor_ms = flops / dev.matmul_flops_per_s * 1e3
    return {
        "bytes_moved": int(bytes_moved),
        "bw_floor_ms": bw_floor_ms,
        "ratio_to_bw_floor": ms / bw_floor_ms,
        "compute_floor_ms": compute_floor_ms,
        "ratio_to_compute_floor": ms / compute_floor_ms,
        "copy_gb_per_s": dev.copy_bytes_per_s / 1e9,
        "matmul_tflops": dev.matmul_flops_per_s / 1e12,
    }


def time_once_ms(make: Callable[[], Any], op: Callable[[Any, Any], Any], device: str) -> float:
    """Median ms of ``op(x, y)`` on two fresh random tensors, freed afterwards."""
    x, y = make(), make()
    return median(time_ms(lambda: op(x, y), device, 3, 10)[1])


def time_ms(fn: Callable[[], Any], device: str, warmup: int, iters: int) -> tuple[list[float], list[float]]:
    """(warm-up times, timed times) in ms; CUDA events on a GPU, a host clock after sync on CPU."""
    import torch

    cuda = device.startswith("cuda")
    out: list[float] = []
    for _ in range(warmup + iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out[:warmup], out[warmup:]


def time_step_ms(step: Callable[[], Any], iters: int, *, device: str, warmup_iters: int,
                 graphs: bool) -> tuple[list[float], float | None]:  # fmt: skip
    """Time ``step``: eager warm-up, then (with ``graphs``) a captured CUDA graph. Returns (samples, eager ms)."""
    import torch

    if not graphs:
        eager, timed = time_ms(step, device, warmup_iters, iters)
        return timed, (median(eager[1:]) if len(eager) > 1 else None)
    side = torch.cuda.Stream()  # warm up on a side stream, as graph capture requires
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        eager = time_ms(step, device, max(2, warmup_iters), 0)[0]
    torch.cuda.current_stream().wait_stream(side)
    eager_ms = median(eager[1:])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    try:
        return time_ms(graph.replay, device, 2, iters)[1], eager_ms
    finally:
        del graph


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def mean(xs: list[float]) -> float:
    return float(statistics.fmean(xs))


def std(xs: list[float]) -> float | None:
    """Sample standard deviation (n - 1) of repeated timings; None for one sample (spread unknown)."""
    return float(statistics.stdev(xs)) if len(xs) > 1 else None
