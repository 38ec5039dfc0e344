"""Peak memory of a block of work: resident set size sampled in a thread (CPU), or CUDA's own peak counter."""

from __future__ import annotations

import threading
from types import TracebackType

import psutil
import torch


class PeakMemory:
    """`with PeakMemory() as peak: ...`: `peak.mb` is the highest RSS seen (MB); `peak.mb - peak.start_mb` is
    what the block added at its peak (earlier work in the process stays resident); `peak.cuda_mb` on GPU."""

    def __init__(self, interval_s: float = 0.02):
        self.interval_s, self.start_mb, self.mb, self.cuda_mb = interval_s, 0.0, 0.0, None
        self._process, self._stop = psutil.Process(), threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.mb = max(self.mb, self._process.memory_info().rss / 2**20)

    def __enter__(self) -> PeakMemory:
        self.start_mb = self.mb = self._process.memory_info().rss / 2**20
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.mb = max(self.mb, self._process.memory_info().rss / 2**20)
        if torch.cuda.is_available():
            self.cuda_mb = torch.cuda.max_memory_allocated() / 2**20
