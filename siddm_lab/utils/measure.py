"""Wall time and peak memory of a block of work (sampling, inversion), for the accounting in metrics.json.

On CUDA the peak is ``torch.cuda.max_memory_allocated`` over the block minus the allocation at its start
(tensors only, as the caching allocator sees them). On CPU there is no allocator statistic: the peak is the
largest resident set size (``/proc/self/statm``, polled every ``interval`` seconds by a thread) minus the
resident set at the start, so it includes everything the process allocated meanwhile and misses peaks
shorter than the interval. Elsewhere (no /proc) the CPU peak is None.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import torch

_STATM = Path("/proc/self/statm")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """The process's resident set size in bytes, or None where /proc is not available."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class Measure:
    """``with Measure(device) as m: ...`` then ``m.seconds`` and ``m.peak_memory_mb`` (None when unknown)."""

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005):
        self.device = torch.device(device)
        self.interval = interval
        self.seconds: float = 0.0
        self.peak_memory_mb: float | None = None
        self._stop = threading.Event()
        self._peak = 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes()
            if rss is not None and rss > self._peak:
                self._peak = rss
            self._stop.wait(self.interval)

    def __enter__(self) -> Measure:
        self._cuda = self.device.type == "cuda" and torch.cuda.is_available()
        if self._cuda:
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._base = rss_bytes()
            self._peak = self._base or 0
            if self._base is not None:
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0
        if self._cuda:
            self.peak_memory_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        elif self._base is not None:
            self._stop.set()
            self._thread.join()
            rss = rss_bytes()
            self._peak = max(self._peak, rss or 0)
            self.peak_memory_mb = (self._peak - self._base) / 2**20

    def as_dict(self, prefix: str = "sample") -> dict:
        return {f"{prefix}_seconds": self.seconds, "peak_memory_mb": self.peak_memory_mb,
                "peak_memory_kind": "cuda_allocated" if self._cuda else "cpu_rss_growth"}
