"""One memory meter for notebooks 02 and 07 and the memory sweep (03): the process's idle baseline and its peak."""

from __future__ import annotations

import threading
import time


class PeakMemory:
    """One memory meter for notebook 02 and the memory sweep (03). The idle baseline is this process's resident memory
    when the meter is made (make it before the model loads); inside `with meter:` a thread samples the resident
    memory. `above_idle_mb()` is what the run added (what 03 tabulates); `peak_mb()` is the CUDA allocator's peak on a
    GPU, else the process's peak resident memory."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil
        import torch

        self.cuda = torch.cuda.is_available()
        self.interval = interval
        self._proc = psutil.Process()
        self.baseline = self._proc.memory_info().rss
        self.peak_rss = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def start(self) -> PeakMemory:
        """Start sampling (what `with meter:` does on entry); a notebook calls it in the cell before `train()`."""
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and take a last reading."""
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._proc.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def kind(self) -> str:
        """Which figure `peak_mb` reports."""
        return "cuda_max_allocated" if self.cuda else "process_peak_rss"

    def peak_mb(self) -> float:
        """The CUDA allocator's peak on a GPU, else the process's peak resident memory, in MB (10^6 bytes)."""
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / 1e6
        return self.peak_rss / 1e6

    def above_idle_mb(self) -> float:
        """Peak resident memory above the idle baseline, in MB."""
        return (self.peak_rss - self.baseline) / 1e6
