"""Peak memory and wall time of a block (the accounting of samplers and inversion)."""

from __future__ import annotations

import time

import pytest
import torch

from siddm_lab.utils.measure import Measure, rss_bytes


@pytest.mark.skipif(rss_bytes() is None, reason="needs /proc/self/statm")
def test_cpu_peak_memory_sees_a_temporary_allocation():
    with Measure("cpu", interval=0.001) as m:
        x = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB, written, held, then freed
        time.sleep(0.05)
        del x
    assert 200 < m.peak_memory_mb < 400
    assert m.seconds >= 0.05
    with Measure("cpu") as small:
        torch.ones(10)
    assert small.peak_memory_mb < 50
    assert m.as_dict()["peak_memory_kind"] == "cpu_rss_growth"
