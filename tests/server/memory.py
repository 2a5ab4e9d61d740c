"""Peak resident memory of a server process while a test attacks it.

psutil's RSS is sampled on a thread (every 2 ms); on Linux the kernel's own high-water mark
(VmHWM, reset through /proc/<pid>/clear_refs) is read as well, so a spike between two
samples is not missed.
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil

MIB = 1024 * 1024


def _kernel_peak(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakRss:
    """`with PeakRss(pid) as peak: ...` then `peak.growth` = peak RSS minus RSS at entry."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.pid = pid
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> PeakRss:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # reset VmHWM
        except OSError:
            pass
        self.start = self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """End the measurement (again: no effect)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _kernel_peak(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.start
