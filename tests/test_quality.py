"""A short real training run must learn the 25-Gaussians.

Threshold: >= 20 of 25 modes, HQ ratio >= 0.35 and 2-D FD <= 0.05 after 3000 steps (~50 s on 2 cores).
Justification: the data has unit variance per axis; an untrained or collapsed model covers 0-1
modes with HQ ≈ 0 and FD of order 1 or more (300 steps give 0 modes, FD ~ 1e5 with EMA
still at its initial weights), while this recipe reaches 24 modes, HQ 0.45, FD 0.002 at 3000 steps (and 25 modes,
HQ 0.76, FD 0.001 at the demo's 6000 steps). The thresholds leave margin for other platforms'
floating point without accepting a model that misses whole rows of the grid or smears the modes
(HQ < 0.35 means most samples fall between modes).
"""

from __future__ import annotations

from tests.helpers import run_train


def test_ddpm_learns_25_gaussians(tmp_path):
    metrics, _ = run_train(
        [
            "experiment=demo",
            "trainer.max_steps=3000",
            "trainer.val_check_interval=3000",
            "model.eval_num_samples=0",
            "eval.num_samples=2000",
            "logger=none",
        ],
        tmp_path,
    )
    assert metrics["modes_covered"] >= 20, metrics
    assert metrics["hq_ratio"] >= 0.35, metrics
    print({k: metrics[k] for k in ("modes_covered", "hq_ratio", "fd_2d", "mmd_poly2")})
    assert metrics["fd_2d"] <= 0.05, metrics


def test_siddm_t4_learns_25_gaussians(tmp_path):
    """SIDDM, T=4 generator steps, 2000 iterations at batch 512 (the demo's recipe cut short; ~80 s).

    Threshold: >= 15 of 25 modes and FD <= 0.2. On this unit-variance grid an untrained generator
    covers 0-2 modes with FD >= 1; at 500 iterations the recipe still has ~6 modes and FD ~0.7, and
    at 2000 iterations it has 20-23 modes and FD ~0.04 (the calibration runs of experiments/siddm_toy,
    the same grid at 7x the scale). HQ is not asserted: at this length the GAN's samples are still
    spread between modes (HQ ~0.15-0.2); only longer runs sharpen them.
    """
    metrics, _ = run_train(
        [
            "experiment=demo_siddm",
            "model.r1_gamma=0",
            "trainer.max_steps=4000",
            "trainer.val_check_interval=4000",
            "model.eval_num_samples=0",
            "eval.num_samples=2000",
            "logger=none",
        ],
        tmp_path,
    )
    print({k: metrics[k] for k in ("modes_covered", "hq_ratio", "fd_2d", "mmd_poly2", "nfe")})
    assert metrics["nfe"] == 4
    assert metrics["modes_covered"] >= 15, metrics
    assert metrics["fd_2d"] <= 0.2, metrics
