"""Tests of siddm_lab.metrics: Fréchet distance, toy mode metrics and MMD."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siddm_lab.data.toy import GaussianGrid
from siddm_lab.metrics import (
    frechet_distance,
    frechet_distance_2d,
    frechet_distance_from_features,
    gaussian_stats,
    mmd,
    mode_metrics,
)

# --------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------


def _random_spd(d: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def _fd_scipy(mu1, s1, mu2, s2) -> float:
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.standard_normal(6), _random_spd(6, rng)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)


def test_frechet_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([3.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert expected == pytest.approx(9 + 6.25 + 4 + 1)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_mean_shift_only():
    rng = np.random.default_rng(1)
    s = _random_spd(5, rng)
    mu = rng.standard_normal(5)
    shift = np.array([1.0, -2.0, 0.0, 0.5, 3.0])
    assert frechet_distance(mu, s, mu + shift, s) == pytest.approx(shift @ shift, rel=1e-8)


def test_frechet_scaled_covariance():
    # Σ2 = c²Σ1: tr(Σ1 + c²Σ1 - 2cΣ1) = (1 - c)² tr Σ1
    rng = np.random.default_rng(2)
    s = _random_spd(4, rng)
    mu = np.zeros(4)
    assert frechet_distance(mu, s, mu, 9.0 * s) == pytest.approx(4.0 * np.trace(s), rel=1e-8)


@pytest.mark.parametrize("d", [1, 2, 16])
def test_frechet_general_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_spd(d, rng), _random_spd(d, rng, scale=3.0)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(_fd_scipy(mu1, s1, mu2, s2), rel=1e-7, abs=1e-9)
    # symmetric and non-negative
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-7)
    assert got > 0


def test_frechet_singular_covariances():
    # rank-deficient covariances (fewer samples than dimensions) stay finite and real
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 10))
    y = rng.standard_normal((4, 10)) + 0.5
    fd = frechet_distance_from_features(torch.from_numpy(x), torch.from_numpy(y))
    assert math.isfinite(fd) and fd > 0
    mu, s = gaussian_stats(torch.from_numpy(x))
    assert np.linalg.matrix_rank(s) == 3
    # the square root amplifies round-off of the zero eigenvalues to ~1e-8 each: near 0, not exact
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-5)


def test_frechet_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


def test_gaussian_stats():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 3)).astype(np.float32)
    mu, s = gaussian_stats(torch.from_numpy(x))
    assert mu.dtype == np.float64 and s.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(
        s, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12
    )  # unbiased (N-1)
    # 1-D features -> [1, 1] covariance
    mu1, s1 = gaussian_stats(torch.arange(5.0)[:, None])
    assert mu1.shape == (1,) and s1.shape == (1, 1) and s1[0, 0] == pytest.approx(2.5)
    # images [N, C, H, W] are flattened
    mu2, s2 = gaussian_stats(torch.zeros(3, 2, 2, 2))
    assert mu2.shape == (8,) and s2.shape == (8, 8)
    with pytest.raises(ValueError, match="at least 2"):
        gaussian_stats(torch.zeros(1, 4))


def test_frechet_from_features_matches_torchmetrics():
    fid_mod = pytest.importorskip("torchmetrics.image.fid")
    if not hasattr(fid_mod, "_compute_fid"):
        pytest.skip("torchmetrics has no _compute_fid")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g, dtype=torch.float64)
    y = (
        torch.randn(300, 16, generator=g, dtype=torch.float64)
        @ (0.5 * torch.eye(16, dtype=torch.float64) + 0.1)
        + 0.3
    )
    ours = frechet_distance_from_features(x, y)
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = torch.cov(x.T), torch.cov(y.T)
    ref = float(fid_mod._compute_fid(mu1, s1, mu2, s2))
    assert ours == pytest.approx(ref, rel=1e-6)
    # and on identical sets
    assert frechet_distance_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    assert float(fid_mod._compute_fid(mu1, s1, mu1, s1)) == pytest.approx(0.0, abs=1e-6)


def test_frechet_from_features_matches_torch_fidelity():
    metric_fid = pytest.importorskip("torch_fidelity.metric_fid")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(500, 16, generator=g, dtype=torch.float64)
    y = 1.5 * torch.randn(500, 16, generator=g, dtype=torch.float64) - 0.2
    y[:, :4] += 0.8 * y[:, 4:8]  # correlated features: non-commuting covariances
    stat_x = metric_fid.fid_features_to_statistics(x)
    stat_y = metric_fid.fid_features_to_statistics(y)
    ref = metric_fid.fid_statistics_to_metric(stat_x, stat_y, verbose=False)[
        metric_fid.KEY_METRIC_FID
    ]
    assert frechet_distance_from_features(x, y) == pytest.approx(ref, rel=1e-6)
    # the statistics agree too
    mu, s = gaussian_stats(x)
    np.testing.assert_allclose(mu, stat_x["mu"], rtol=1e-12)
    np.testing.assert_allclose(s, stat_x["sigma"], rtol=1e-12)


def test_frechet_distance_2d_of_samples():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20_000, 2, generator=g)
    y = torch.randn(20_000, 2, generator=g) * torch.tensor([2.0, 1.0]) + torch.tensor([1.0, 0.0])
    # population value: |Δμ|² + (sqrt(1) - sqrt(4))² = 1 + 1
    assert frechet_distance_2d(x, y) == pytest.approx(2.0, abs=0.06)
    assert frechet_distance_2d(x, x) == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------------------------
# mode metrics
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid():
    return GaussianGrid()


def test_mode_metrics_perfect_samples(grid):
    x = grid.sample(10_000, torch.Generator().manual_seed(0))
    m = mode_metrics(x, grid.centers, grid.std)
    assert set(m) == {"modes_covered", "hq_ratio", "mode_kl"}
    assert isinstance(m["modes_covered"], int) and m["modes_covered"] == 25
    assert m["hq_ratio"] == pytest.approx(1 - math.exp(-4.5), abs=0.005)  # P(|ε| <= 3σ) in 2-D
    assert m["mode_kl"] == pytest.approx(0.0, abs=0.01)
    assert m["mode_kl"] >= 0
    # a wider acceptance radius includes virtually all samples
    assert mode_metrics(x, grid.centers, grid.std, n_std=5)["hq_ratio"] > 0.999


def test_mode_metrics_exact_centres(grid):
    x = grid.centers.repeat(4, 1)
    m = mode_metrics(x, grid.centers, grid.std)
    assert m == {"modes_covered": 25, "hq_ratio": 1.0, "mode_kl": pytest.approx(0.0, abs=1e-12)}


def test_mode_metrics_single_mode(grid):
    x = grid.centers[7].repeat(1000, 1) + 0.01 * torch.randn(
        1000, 2, generator=torch.Generator().manual_seed(0)
    )
    m = mode_metrics(x, grid.centers, grid.std)
    assert m["modes_covered"] == 1
    assert m["hq_ratio"] == pytest.approx(1.0)
    assert m["mode_kl"] == pytest.approx(math.log(25), rel=1e-9)


def test_mode_metrics_far_away(grid):
    x = torch.full((500, 2), 100.0)
    m = mode_metrics(x, grid.centers, grid.std)
    assert m["hq_ratio"] == 0.0
    assert m["modes_covered"] == 0
    assert m["mode_kl"] == pytest.approx(math.log(25))  # all nearest to one corner
    # midway between two centres: more than 3 std from both
    mid = (grid.centers[0] + grid.centers[1]) / 2
    assert mode_metrics(mid.repeat(10, 1), grid.centers, grid.std)["hq_ratio"] == 0.0


def test_mode_metrics_min_frac_threshold():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    # 95 points in mode 0, 5 in mode 1: expected share 50; 10 % of it is 5 -> covered
    x = torch.cat([centers[0].repeat(95, 1), centers[1].repeat(5, 1)])
    assert mode_metrics(x, centers, 0.1)["modes_covered"] == 2
    x = torch.cat([centers[0].repeat(96, 1), centers[1].repeat(4, 1)])
    assert mode_metrics(x, centers, 0.1)["modes_covered"] == 1
    assert mode_metrics(x, centers, 0.1, min_frac=0.05)["modes_covered"] == 2
    # the KL of the histogram (0.96, 0.04) to uniform
    p = np.array([0.96, 0.04])
    assert mode_metrics(x, centers, 0.1)["mode_kl"] == pytest.approx(
        float(np.sum(p * np.log(2 * p)))
    )


def test_mode_metrics_only_hq_samples_count_for_coverage():
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    # half the points sit on mode 0; the other half are nearest to mode 1 but 2 units away
    x = torch.cat([centers[0].repeat(50, 1), torch.tensor([[8.0, 0.0]]).repeat(50, 1)])
    m = mode_metrics(x, centers, std=0.1)
    assert m["modes_covered"] == 1
    assert m["hq_ratio"] == pytest.approx(0.5)
    assert m["mode_kl"] == pytest.approx(0.0, abs=1e-12)  # the histogram uses all samples


# --------------------------------------------------------------------------------------------
# MMD
# --------------------------------------------------------------------------------------------


def _unbiased_mmd(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    n, m = len(kxx), len(kyy)
    return float(
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )


def test_mmd_poly2_matches_sklearn_kernel():
    from sklearn.metrics.pairwise import polynomial_kernel

    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 2))
    y = rng.standard_normal((90, 2)) * 1.3 + 0.4
    expected = _unbiased_mmd(
        polynomial_kernel(x, x, degree=2),
        polynomial_kernel(y, y, degree=2),
        polynomial_kernel(x, y, degree=2),
    )
    got = mmd(torch.from_numpy(x), torch.from_numpy(y), kernel="poly", degree=2)
    assert got == pytest.approx(expected, rel=1e-10)
    assert got > 0
    # degree 3 (KID's kernel) and non-default gamma / coef0 follow sklearn too
    for kw in ({"degree": 3}, {"degree": 2, "gamma": 0.3, "coef0": 2.0}):
        exp = _unbiased_mmd(
            polynomial_kernel(x, x, **kw),
            polynomial_kernel(y, y, **kw),
            polynomial_kernel(x, y, **kw),
        )
        assert mmd(torch.from_numpy(x), torch.from_numpy(y), kernel="poly", **kw) == pytest.approx(
            exp, rel=1e-10
        )


def test_mmd_rbf_matches_sklearn_kernel():
    from sklearn.metrics.pairwise import rbf_kernel

    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 3))
    y = rng.standard_normal((80, 3)) + 1.0
    sigma = 1.7
    gamma = 1 / (2 * sigma**2)
    expected = _unbiased_mmd(
        rbf_kernel(x, x, gamma=gamma), rbf_kernel(y, y, gamma=gamma), rbf_kernel(x, y, gamma=gamma)
    )
    got = mmd(torch.from_numpy(x), torch.from_numpy(y), kernel="rbf", sigma=sigma)
    assert got == pytest.approx(expected, rel=1e-9)
    # default bandwidth: the median pairwise distance of the pooled samples (torch's median:
    # the lower of the two middle values for an even count)
    pooled = np.concatenate([x, y])
    from scipy.spatial.distance import pdist

    d = np.sort(pdist(pooled))
    med = float(d[(len(d) - 1) // 2])
    got_default = mmd(torch.from_numpy(x), torch.from_numpy(y), kernel="rbf")
    assert got_default == pytest.approx(
        mmd(torch.from_numpy(x), torch.from_numpy(y), kernel="rbf", sigma=med), rel=1e-12
    )
    assert got_default > 0


@pytest.mark.parametrize("kernel", ["poly", "rbf"])
def test_mmd_same_vs_shifted(kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 2, generator=g)
    y = torch.randn(1000, 2, generator=g)
    z = torch.randn(1000, 2, generator=g) + torch.tensor([1.0, 0.0])
    same = mmd(x, y, kernel=kernel)
    shifted = mmd(x, z, kernel=kernel)
    assert abs(same) < 0.01
    assert shifted > 0.1
    assert shifted > 20 * abs(same)


def test_mmd_rbf_detects_variance_change():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(800, 2, generator=g)
    y = 2.0 * torch.randn(800, 2, generator=g)
    assert mmd(x, y, kernel="rbf") > 0.05


def test_mmd_unbiased_can_be_negative_and_accepts_images():
    # the unbiased estimator is centred on 0: for equal distributions it takes both signs
    vals = [
        mmd(
            torch.randn(50, 2, generator=torch.Generator().manual_seed(2 * s)),
            torch.randn(50, 2, generator=torch.Generator().manual_seed(2 * s + 1)),
        )
        for s in range(20)
    ]
    assert min(vals) < 0 < max(vals)
    a = torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(mmd(a, a + 0.5, kernel="rbf"))


def test_mmd_errors():
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="kernel"):
        mmd(x, x, kernel="laplace")
    with pytest.raises(ValueError, match="at least 2"):
        mmd(x[:1], x)
    with pytest.raises(ValueError, match="at least 2"):
        mmd(x, x[:1], kernel="rbf")


@pytest.mark.parametrize("kernel,degree", [("poly", 2), ("poly", 3), ("rbf", 2)])
def test_mmd_fast_paths_equal_the_dense_kernel_matrices(kernel, degree):
    """The degree-2 feature map and the blocked sums give the dense unbiased estimator exactly."""
    from siddm_lab.metrics.toy import _kernel, mmd

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    y = torch.randn(2500, 2, generator=g, dtype=torch.float64) * 1.2 + 0.1
    kw = {"kernel": kernel, "degree": degree, "gamma": None, "coef0": 1.0, "sigma": 0.7}
    kxx, kyy, kxy = _kernel(x, x, **kw), _kernel(y, y, **kw), _kernel(x, y, **kw)
    dense = ((kxx.sum() - kxx.diagonal().sum()) / (3000 * 2999) + (kyy.sum() - kyy.diagonal().sum()) / (2500 * 2499)
             - 2 * kxy.mean())
    assert mmd(x, y, kernel=kernel, degree=degree, sigma=0.7) == pytest.approx(float(dense), rel=1e-9, abs=1e-12)
