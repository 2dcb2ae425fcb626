"""Tests of siddm_lab.data: toy distributions, raw-file readers and the datamodules."""

from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from siddm_lab.data import (
    GaussianGrid,
    GaussianRing,
    ImageDataModule,
    SwissRoll,
    ToyDataModule,
    read_cifar10,
    read_digits,
    read_image_folder,
    read_mnist,
)
from siddm_lab.data.idx import check_file, md5sum, read_idx
from siddm_lab.errors import ConfigError, DataError
from siddm_lab.evaluation import data_metrics

# --------------------------------------------------------------------------------------------
# toy distributions
# --------------------------------------------------------------------------------------------


def _nearest(x: torch.Tensor, centers: torch.Tensor):
    d = torch.cdist(x.double(), centers.double())
    return d.min(dim=1)


def test_gaussian_grid_default_centres_and_std():
    g = GaussianGrid()
    assert g.centers.shape == (25, 2)
    assert g.std == pytest.approx(0.05)
    assert g.name == "gaussians25"
    axis = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0]) / math.sqrt(2)
    expected = {(round(a, 5), round(b, 5)) for a in axis.tolist() for b in axis.tolist()}
    got = {(round(a, 5), round(b, 5)) for a, b in g.centers.tolist()}
    assert got == expected
    # unit-variance normalisation of the benchmark: the centres have per-axis variance 1
    assert g.centers.var(dim=0, unbiased=False).tolist() == pytest.approx([1.0, 1.0], rel=1e-5)


def test_gaussian_grid_samples_near_centres_and_all_modes_used():
    g = GaussianGrid()
    x = g.sample(20_000, torch.Generator().manual_seed(0))
    assert x.shape == (20_000, 2) and x.dtype == torch.float32
    d, idx = _nearest(x, g.centers)
    assert float(d.max()) < 6 * g.std
    counts = torch.bincount(idx, minlength=25)
    # equally weighted: every mode gets 800 ± a few standard deviations (sd ≈ 28)
    assert int(counts.min()) > 650 and int(counts.max()) < 950
    # per-axis offsets have std ≈ 0.05
    eps = x.double() - g.centers.double()[idx]
    assert eps.std(dim=0).tolist() == pytest.approx([0.05, 0.05], rel=0.05)
    assert eps.mean(dim=0).abs().max() < 0.005


def test_gaussian_grid_reproducible_with_generator():
    g = GaussianGrid()
    a = g.sample(1000, torch.Generator().manual_seed(123))
    b = g.sample(1000, torch.Generator().manual_seed(123))
    c = g.sample(1000, torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_gaussian_grid_siddm_variant():
    g = GaussianGrid(n=5, spacing=5, offset=0, std=1 / 3, clamp=1)
    expected = {(5.0 * i, 5.0 * j) for i in range(5) for j in range(5)}
    assert {(a, b) for a, b in g.centers.tolist()} == expected
    x = g.sample(20_000, torch.Generator().manual_seed(1))
    # centres are 5 apart and offsets at most 1 per axis: the nearest centre is the own one
    idx = torch.round(x / 5).clamp(0, 4)
    eps = x - 5 * idx
    assert float(eps.abs().max()) <= 1.0 + 1e-6
    # the clamp is active (randn/3 exceeds 1 in ~0.27 % of the coordinates) ...
    n_at_bound = int((eps.abs() > 1 - 1e-6).sum())
    assert 40 < n_at_bound < 180
    # ... and the unclamped part has std close to 1/3
    assert float(eps.std()) == pytest.approx(1 / 3, rel=0.05)
    assert torch.unique(idx, dim=0).shape[0] == 25


def test_gaussian_grid_custom_size_and_offset():
    g = GaussianGrid(n=3, spacing=2.0, std=0.1)
    assert g.centers.shape == (9, 2)
    assert g.name == "gaussians9"
    assert sorted(set(g.centers[:, 0].tolist())) == [-2.0, 0.0, 2.0]
    g1 = GaussianGrid(n=1, spacing=1.0, offset=3.0, std=0.1)
    assert g1.centers.tolist() == [[3.0, 3.0]]


def test_gaussian_ring():
    r = GaussianRing()
    assert r.centers.shape == (8, 2)
    assert r.name == "ring8"
    assert r.centers.norm(dim=1).tolist() == pytest.approx([math.sqrt(2)] * 8, rel=1e-6)
    angles = torch.atan2(r.centers[:, 1], r.centers[:, 0]).tolist()
    assert sorted(round(math.degrees(a)) % 360 for a in angles) == [
        0,
        45,
        90,
        135,
        180,
        225,
        270,
        315,
    ]
    x = r.sample(8000, torch.Generator().manual_seed(0))
    d, idx = _nearest(x, r.centers)
    assert float(d.max()) < 6 * r.std
    assert torch.bincount(idx, minlength=8).min() > 850
    r3 = GaussianRing(k=3, radius=2.0, std=0.1)
    assert r3.centers.norm(dim=1).tolist() == pytest.approx([2.0] * 3, rel=1e-6)
    assert r3.centers[0].tolist() == pytest.approx([2.0, 0.0], abs=1e-6)


def test_swiss_roll():
    s = SwissRoll()
    assert s.centers is None and s.std is None
    x = s.sample(5000, torch.Generator().manual_seed(0))
    assert x.shape == (5000, 2)
    assert torch.isfinite(x).all()
    # t in [1.5π, 4.5π]: radius |x|/scale in roughly [1.5π - noise, 4.5π + noise]
    rad = x.norm(dim=1) / s.scale
    assert float(rad.min()) > 1.5 * math.pi - 3
    assert float(rad.max()) < 4.5 * math.pi + 3
    assert torch.equal(x, s.sample(5000, torch.Generator().manual_seed(0)))
    # noise=0: points lie exactly on the spiral r = t, angle = t
    s0 = SwissRoll(noise=0.0, scale=1.0)
    y = s0.sample(100, torch.Generator().manual_seed(0)).double()
    t = y.norm(dim=1)
    assert torch.allclose(torch.stack([t * t.cos(), t * t.sin()], dim=1), y, atol=1e-4)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: GaussianGrid(n=0),
        lambda: GaussianGrid(spacing=0),
        lambda: GaussianGrid(spacing=-1.0),
        lambda: GaussianGrid(std=0),
        lambda: GaussianGrid(std=-0.1),
        lambda: GaussianGrid(clamp=0),
        lambda: GaussianGrid(clamp=-1.0),
        lambda: GaussianRing(k=0),
        lambda: GaussianRing(radius=0),
        lambda: GaussianRing(std=-1),
        lambda: SwissRoll(noise=-0.1),
        lambda: SwissRoll(scale=0),
    ],
)
def test_toy_invalid_params_raise_config_error(factory):
    with pytest.raises(ConfigError):
        factory()


# --------------------------------------------------------------------------------------------
# IDX / MNIST
# --------------------------------------------------------------------------------------------


def _idx_bytes(arr: np.ndarray) -> bytes:
    """The official IDX encoding of a uint8 array (magic 0x0000 08 ndim, big-endian dims)."""
    assert arr.dtype == np.uint8
    magic = 0x00000800 | arr.ndim
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _tiny_mnist(n: int, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def _write_mnist(root: Path, split: str, images, labels, gz: bool = False) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
        path = raw / f"{prefix}-{kind}-ubyte"
        data = _idx_bytes(arr)
        if gz:
            path = path.with_name(path.name + ".gz")
            with gzip.open(path, "wb") as f:
                f.write(data)
        else:
            path.write_bytes(data)
    return raw


def test_idx_header_is_official():
    # sanity check of the writer used below: the magic numbers of the official files
    images, labels = _tiny_mnist(3, 0)
    assert _idx_bytes(images)[:4] == bytes.fromhex("00000803")
    assert _idx_bytes(labels)[:4] == bytes.fromhex("00000801")
    assert _idx_bytes(images)[4:16] == struct.pack(">III", 3, 28, 28)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_read_mnist_tiny(tmp_path, gz, split):
    images, labels = _tiny_mnist(7, seed=1 if split == "train" else 2)
    _write_mnist(tmp_path, split, images, labels, gz=gz)
    x, y = read_mnist(tmp_path, split, verify="none")
    assert x.shape == (7, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (7,) and y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], images)
    np.testing.assert_array_equal(y, labels.astype(np.int64))


def test_read_mnist_reads_the_requested_split(tmp_path):
    tr_i, tr_l = _tiny_mnist(5, 1)
    te_i, te_l = _tiny_mnist(3, 2)
    _write_mnist(tmp_path, "train", tr_i, tr_l)
    _write_mnist(tmp_path, "test", te_i, te_l, gz=True)
    x_tr, _ = read_mnist(tmp_path, "train", verify="none")
    x_te, y_te = read_mnist(tmp_path, "test", verify="none")
    assert len(x_tr) == 5 and len(x_te) == 3
    np.testing.assert_array_equal(x_te[:, 0], te_i)
    np.testing.assert_array_equal(y_te, te_l)


def test_read_mnist_md5_and_size_checks_fail_on_tiny_files(tmp_path):
    images, labels = _tiny_mnist(4, 0)
    raw = _write_mnist(tmp_path, "test", images, labels)
    for verify in ("md5", "size"):
        with pytest.raises(DataError) as e:
            read_mnist(tmp_path, "test", verify=verify)
        msg = str(e.value)
        assert "t10k-images-idx3-ubyte" in msg and str(raw) in msg
        assert "bytes" in msg or "md5" in msg
        assert "7840016" in msg  # the official size is named


def test_read_mnist_unknown_verify_and_split(tmp_path):
    images, labels = _tiny_mnist(4, 0)
    _write_mnist(tmp_path, "test", images, labels)
    with pytest.raises(DataError, match="verify"):
        read_mnist(tmp_path, "test", verify="sha1")
    with pytest.raises(DataError, match="split"):
        read_mnist(tmp_path, "validation", verify="none")


def test_read_mnist_missing_dir_and_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as e:
        read_mnist(missing, "test", verify="none")
    assert "nowhere" in str(e.value)
    # directory exists, files do not
    with pytest.raises(DataError) as e:
        read_mnist(tmp_path, "test", verify="none")
    assert str(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte") in str(e.value)
    # images present, labels missing
    images, labels = _tiny_mnist(4, 0)
    raw = _write_mnist(tmp_path, "test", images, labels)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as e:
        read_mnist(tmp_path, "test", verify="none")
    assert str(raw / "t10k-labels-idx1-ubyte") in str(e.value)


def test_read_mnist_truncated_file(tmp_path):
    images, labels = _tiny_mnist(4, 0)
    raw = _write_mnist(tmp_path, "test", images, labels)
    p = raw / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError) as e:
        read_mnist(tmp_path, "test", verify="none")
    assert "truncated" in str(e.value) and str(p) in str(e.value)


def test_read_mnist_truncated_gz(tmp_path):
    images, labels = _tiny_mnist(4, 0)
    raw = _write_mnist(tmp_path, "test", images, labels, gz=True)
    p = raw / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        read_mnist(tmp_path, "test", verify="none")


def test_read_mnist_image_label_count_mismatch(tmp_path):
    images, _ = _tiny_mnist(4, 0)
    _, labels = _tiny_mnist(5, 1)
    _write_mnist(tmp_path, "test", images, labels)
    with pytest.raises(DataError, match="do not match"):
        read_mnist(tmp_path, "test", verify="none")


def test_read_idx_dtypes_and_shapes(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "a-idx3-ubyte"
    p.write_bytes(_idx_bytes(a))
    np.testing.assert_array_equal(read_idx(p), a)
    # big-endian int32 (type code 0x0C)
    b = np.array([[1, -2, 70000]], dtype=">i4")
    p2 = tmp_path / "b-idx2"
    p2.write_bytes(bytes([0, 0, 0x0C, 2]) + struct.pack(">II", 1, 3) + b.tobytes())
    out = read_idx(p2)
    assert out.shape == (1, 3) and out.tolist() == [[1, -2, 70000]]
    # the returned array is writable (a copy, not a view of the file buffer)
    out[0, 0] = 5


@pytest.mark.parametrize(
    "payload, pattern",
    [
        (b"", "bad magic"),
        (b"\x00\x00", "bad magic"),
        (struct.pack(">I", 0x01000803) + struct.pack(">III", 1, 2, 2) + bytes(4), "bad magic"),
        (bytes([0, 0, 0x42, 1]) + struct.pack(">I", 4) + bytes(4), "bad magic"),  # unknown dtype
        (bytes([0, 0, 0x08, 3]) + struct.pack(">I", 4), "header truncated"),
        (struct.pack(">I", 0x803) + struct.pack(">III", 2, 28, 28) + bytes(28 * 28), "truncated"),
        (struct.pack(">I", 0x801) + struct.pack(">I", 3) + bytes(4), "corrupt"),  # trailing bytes
    ],
    ids=["empty", "short", "bad-magic", "bad-dtype", "header-trunc", "data-trunc", "too-long"],
)
def test_read_idx_rejects_bad_files(tmp_path, payload, pattern):
    p = tmp_path / "bad-idx-ubyte"
    p.write_bytes(payload)
    with pytest.raises(DataError, match=pattern) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_corrupt_gzip_stream(tmp_path):
    a = np.arange(200, dtype=np.uint8).reshape(2, 10, 10)
    data = bytearray(gzip.compress(_idx_bytes(a)))
    for i in range(12, len(data) - 8):  # scramble the deflate stream, keep the gzip header
        data[i] ^= 0xFF
    p = tmp_path / "x-idx3-ubyte.gz"
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match="x-idx3-ubyte.gz"):
        read_idx(p)
    p.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError):
        read_idx(p)


def test_check_file_md5_and_size(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"hello world")
    good = md5sum(p)
    assert good == "5eb63bbbe01eeed093cb22bb8f5acdc3"
    check_file(p, md5=good, size=11, verify="md5", what="X")
    check_file(p, md5="0" * 32, size=11, verify="size", what="X")  # size only
    check_file(p, md5="0" * 32, size=99, verify="none", what="X")
    with pytest.raises(DataError, match="md5") as e:
        check_file(p, md5="0" * 32, size=11, verify="md5", what="X")
    assert str(p) in str(e.value) and good in str(e.value)
    with pytest.raises(DataError, match="bytes"):
        check_file(p, md5=good, size=12, verify="size", what="X")
    with pytest.raises(DataError, match="does not exist"):
        check_file(tmp_path / "nope", md5=None, size=None, verify="none", what="X")
    with pytest.raises(DataError, match="unknown"):
        check_file(p, md5=None, size=None, verify="crc", what="X")


# --------------------------------------------------------------------------------------------
# real MNIST (the shared offline copy)
# --------------------------------------------------------------------------------------------


def test_real_mnist_test_split_md5(mnist_root):
    x, y = read_mnist(mnist_root, "test", verify="md5")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert set(np.unique(y).tolist()) == set(range(10))
    # the well-known class histogram of the MNIST test set
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert x.max() == 255 and x.min() == 0
    assert 30 < float(x.mean()) < 37  # MNIST mean intensity ≈ 0.1325 · 255


def test_real_mnist_train_split_md5(mnist_root):
    x, y = read_mnist(mnist_root, "train", verify="md5")
    assert x.shape == (60000, 1, 28, 28) and y.shape == (60000,)
    assert np.bincount(y).tolist()[:2] == [5923, 6742]


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _write_cifar(root: Path, n: int = 3, protocol: int = 2, seed: int = 0) -> dict[str, dict]:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for k, name in enumerate(CIFAR_BATCHES):
        batch = {
            "batch_label": f"training batch {k + 1} of 5"
            if name != "test_batch"
            else "testing batch 1 of 1",
            "labels": [int(v) for v in rng.integers(0, 10, size=n)],
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            "filenames": [f"img_{k}_{i}.png" for i in range(n)],
        }
        with open(base / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        written[name] = batch
    return written


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_read_cifar10_official_layout(tmp_path, protocol):
    batches = _write_cifar(tmp_path, n=3, protocol=protocol)
    x, y = read_cifar10(tmp_path, "train", verify="none")
    assert x.shape == (15, 3, 32, 32) and x.dtype == np.uint8
    assert y.shape == (15,) and y.dtype == np.int64
    expected_labels = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert y.tolist() == expected_labels
    # pixel layout: row = 1024 R, 1024 G, 1024 B, each a row-major 32x32 plane
    first = batches["data_batch_1"]["data"]
    for c, row, col in [(0, 0, 0), (1, 5, 7), (2, 31, 30), (0, 17, 2)]:
        assert x[0, c, row, col] == first[0, c * 1024 + row * 32 + col]
    last = batches["data_batch_5"]["data"]
    np.testing.assert_array_equal(x[-1, 2].ravel(), last[-1, 2048:])
    xt, yt = read_cifar10(tmp_path, "test", verify="none")
    assert xt.shape == (3, 3, 32, 32)
    assert yt.tolist() == batches["test_batch"]["labels"]
    np.testing.assert_array_equal(xt.reshape(3, -1), batches["test_batch"]["data"])


def test_read_cifar10_known_pixel(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for name in CIFAR_BATCHES:
        data = np.zeros((2, 3072), dtype=np.uint8)
        data[1, 0 * 1024 + 3 * 32 + 4] = 11  # R at (y=3, x=4) of image 1
        data[1, 1 * 1024 + 3 * 32 + 4] = 22  # G
        data[1, 2 * 1024 + 3 * 32 + 4] = 33  # B
        data[0, 1024 + 31 * 32 + 0] = 99  # G at (y=31, x=0) of image 0
        batch = {"batch_label": "b", "labels": [3, 7], "data": data, "filenames": ["a", "b"]}
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    x, _ = read_cifar10(tmp_path, "test", verify="none")
    assert x[1, :, 3, 4].tolist() == [11, 22, 33]
    assert x[0, 1, 31, 0] == 99
    assert int(x.astype(np.int64).sum()) == 11 + 22 + 33 + 99


def test_read_cifar10_numpy1_style_pickle(tmp_path):
    """The official files were pickled by Python 2 / numpy 1 (module ``numpy.core.multiarray``)."""
    _write_cifar(tmp_path, n=2, protocol=2)
    p = tmp_path / "cifar-10-batches-py" / "test_batch"
    blob = p.read_bytes()
    if b"cnumpy._core.multiarray\n" in blob:
        blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob
    p.write_bytes(blob)
    x, y = read_cifar10(tmp_path, "test", verify="none")
    assert x.shape == (2, 3, 32, 32) and len(y) == 2


def test_read_cifar10_md5_check(tmp_path):
    _write_cifar(tmp_path, n=2)
    with pytest.raises(DataError, match="md5") as e:
        read_cifar10(tmp_path, "test", verify="md5")
    assert str(tmp_path / "cifar-10-batches-py" / "test_batch") in str(e.value)


def test_read_cifar10_missing(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_cifar10(tmp_path / "absent", "train", verify="none")
    _write_cifar(tmp_path, n=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError) as e:
        read_cifar10(tmp_path, "train", verify="none")
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_4") in str(e.value)
    read_cifar10(tmp_path, "test", verify="none")  # the other split is still readable


@pytest.mark.parametrize(
    "batch",
    [
        {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]},
        {"data": np.zeros((2, 3072), np.uint8), "labels": [0]},
        {"data": np.zeros((3072,), np.uint8), "labels": [0]},
        {"labels": [0, 1]},
    ],
    ids=["row-size", "label-count", "1d", "no-data"],
)
def test_read_cifar10_bad_content(tmp_path, batch):
    _write_cifar(tmp_path, n=2)
    p = tmp_path / "cifar-10-batches-py" / "test_batch"
    p.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError) as e:
        read_cifar10(tmp_path, "test", verify="none")
    assert str(p) in str(e.value)


def test_read_cifar10_garbage_file(tmp_path):
    _write_cifar(tmp_path, n=2)
    p = tmp_path / "cifar-10-batches-py" / "test_batch"
    p.write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="not a valid CIFAR-10"):
        read_cifar10(tmp_path, "test", verify="none")


class _Exploit:
    """Unpickling this runs a shell command (the classic pickle payload)."""

    def __init__(self, cmd: str):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalExploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("where", ["whole", "in-dict", "eval"])
def test_read_cifar10_refuses_malicious_pickle(tmp_path, where):
    _write_cifar(tmp_path, n=2)
    marker = tmp_path / "PWNED"
    p = tmp_path / "cifar-10-batches-py" / "test_batch"
    if where == "whole":
        obj = _Exploit(f"touch {marker}")
    elif where == "in-dict":
        obj = {
            "data": np.zeros((1, 3072), np.uint8),
            "labels": [0],
            "batch_label": _Exploit(f"touch {marker}"),
        }
    else:
        obj = {"data": np.zeros((1, 3072), np.uint8), "labels": [_EvalExploit(marker)]}
    p.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError, match="refusing") as e:
        read_cifar10(tmp_path, "test", verify="none")
    assert str(p) in str(e.value)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# image folder
# --------------------------------------------------------------------------------------------


def _png(path: Path, arr: np.ndarray):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_read_image_folder_classes_and_shapes(tmp_path):
    red = np.zeros((20, 20, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((12, 30, 3), np.uint8)  # non-square: resized on the short side, centre-cropped
    blue[..., 2] = 200
    _png(tmp_path / "cat" / "a.png", red)
    _png(tmp_path / "cat" / "b.png", red)
    _png(tmp_path / "dog" / "c.png", blue)
    (tmp_path / "dog" / "notes.txt").write_text("ignored")
    x, y = read_image_folder(tmp_path, "train", image_size=8, channels=3)
    assert x.shape == (3, 3, 8, 8) and x.dtype == np.uint8
    assert y.tolist() == [0, 0, 1]  # sorted files, class index by sorted folder name
    assert (x[0, 0] == 255).all() and (x[0, 1:] == 0).all()
    assert (np.abs(x[2, 2].astype(int) - 200) <= 1).all() and (x[2, :2] == 0).all()
    g, _ = read_image_folder(tmp_path, "train", image_size=4, channels=1)
    assert g.shape == (3, 1, 4, 4)
    # PIL's L conversion: 299/1000 · 255 ≈ 76
    assert abs(int(g[0, 0, 0, 0]) - 76) <= 1


def test_read_image_folder_split_subdir(tmp_path):
    img = np.full((8, 8, 3), 10, np.uint8)
    _png(tmp_path / "train" / "a" / "1.png", img)
    _png(tmp_path / "train" / "b" / "2.png", img)
    _png(tmp_path / "test" / "a" / "3.png", img)
    x, y = read_image_folder(tmp_path, "train", image_size=8)
    assert len(x) == 2 and y.tolist() == [0, 1]
    xt, yt = read_image_folder(tmp_path, "test", image_size=8)
    assert len(xt) == 1 and yt.tolist() == [0]


def test_read_image_folder_errors(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match="holds no images"):
        read_image_folder(tmp_path / "empty", "train")
    with pytest.raises(DataError, match="does not exist"):
        read_image_folder(tmp_path / "missing", "train")
    _png(tmp_path / "imgs" / "a" / "ok.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="channels"):
        read_image_folder(tmp_path / "imgs", "train", channels=4)
    with pytest.raises(DataError, match="split"):
        read_image_folder(tmp_path / "imgs", "val")


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated"])
def test_read_image_folder_corrupt_png(tmp_path, kind):
    import io

    from PIL import Image

    _png(tmp_path / "a" / "good.png", np.zeros((16, 16, 3), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
        buf, "PNG"
    )
    blob = {"garbage": b"definitely not a png", "empty": b"", "truncated": buf.getvalue()[:300]}[
        kind
    ]
    bad = tmp_path / "a" / "zz_bad.png"
    bad.write_bytes(blob)
    with pytest.raises(DataError) as e:
        read_image_folder(tmp_path, "train", image_size=8)
    assert str(bad) in str(e.value)


# --------------------------------------------------------------------------------------------
# sklearn digits
# --------------------------------------------------------------------------------------------


def test_read_digits_split():
    xtr, ytr = read_digits(split="train")
    xte, yte = read_digits(split="test")
    assert xtr.shape[1:] == (1, 8, 8) and xte.shape[1:] == (1, 8, 8)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int64
    assert len(xtr) + len(xte) == 1797
    assert len(xte) == round(1797 * 0.2)
    assert xtr.max() == 255 and xtr.min() == 0
    assert set(ytr.tolist()) == set(range(10)) and set(yte.tolist()) == set(range(10))
    # deterministic across calls
    x2, y2 = read_digits(split="train")
    np.testing.assert_array_equal(x2, xtr)
    np.testing.assert_array_equal(y2, ytr)
    a, _ = read_digits(split="test", test_fraction=0.5)
    assert len(a) == round(1797 * 0.5)


def test_read_digits_split_disjoint_by_permutation():
    # the split is a permutation of sklearn's images: train + test is exactly the source multiset,
    # so no image is in both splits (beyond sklearn's own duplicates) and none is lost
    xtr, _ = read_digits(split="train")
    xte, _ = read_digits(split="test")
    both = np.concatenate([xtr, xte]).reshape(1797, -1)
    from sklearn.datasets import load_digits

    src = np.round(load_digits().images * (255 / 16)).astype(np.uint8).reshape(1797, -1)
    assert sorted(map(bytes, both)) == sorted(map(bytes, src))


# --------------------------------------------------------------------------------------------
# ToyDataModule
# --------------------------------------------------------------------------------------------


def _toy_dm(seed=0, **kw):
    kw = {
        "n_train": 2048,
        "n_val": 256,
        "n_eval": 5000,
        "batch_size": 128,
        "mmd_max_points": 1000,
        **kw,
    }
    return ToyDataModule(GaussianGrid(), seed=seed, **kw)


def test_toy_datamodule_batches():
    dm = _toy_dm()
    dm.setup("fit")
    assert dm.data_shape == (2,)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2048 // 128
    for b in batches:
        assert isinstance(b, torch.Tensor)
        assert b.shape == (128, 2) and b.dtype == torch.float32
    seen = torch.cat(batches)
    # one epoch is a permutation of the training set
    assert torch.equal(torch.unique(seen, dim=0), torch.unique(dm.train_set.data, dim=0))
    assert len(torch.unique(seen, dim=0)) == 2048
    val = torch.cat(list(dm.val_dataloader()))
    assert torch.equal(val, dm.val_set.data)  # in order, nothing dropped
    assert dm.reference.shape == (5000, 2)


def test_toy_datamodule_reproducible():
    a, b, c = _toy_dm(seed=3), _toy_dm(seed=3), _toy_dm(seed=4)
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.train_set.data, b.train_set.data)
    assert torch.equal(a.reference, b.reference)
    assert not torch.equal(a.train_set.data, c.train_set.data)
    torch.manual_seed(0)
    ba = next(iter(a.train_dataloader()))
    torch.manual_seed(0)
    bb = next(iter(b.train_dataloader()))
    assert torch.equal(ba, bb)
    # train, val and reference are different draws
    assert not torch.equal(a.train_set.data[:256], a.val_set.data)
    # setup is idempotent
    data = a.train_set.data
    a.setup()
    assert a.train_set.data is data


def test_toy_datamodule_evaluate_perfect_samples():
    dm = _toy_dm()
    samples = dm.distribution.sample(5000, torch.Generator().manual_seed(99))
    m = data_metrics(dm, samples)
    assert set(m) == {"fd_2d", "mmd_poly2", "mmd_poly2_std", "mmd_rbf", "modes_covered", "hq_ratio", "mode_kl"}
    assert m["modes_covered"] == 25
    # within 3 std of a 2-D isotropic Gaussian: P = 1 - exp(-9/2) ≈ 0.9889
    assert m["hq_ratio"] == pytest.approx(1 - math.exp(-4.5), abs=0.006)
    assert 0 <= m["fd_2d"] < 0.01
    # unbiased MMD² of 1000 vs 1000 points: noise of about ±0.01 (poly) and ±0.002 (rbf)
    assert abs(m["mmd_poly2"]) < 0.05 and abs(m["mmd_rbf"]) < 0.01 and abs(m["mmd_poly2_std"]) < 0.05
    assert 0 <= m["mode_kl"] < 0.02
    # a collapsed generator is clearly worse on every metric
    bad = data_metrics(
        dm,
        torch.zeros(5000, 2)
        + 0.01 * torch.randn(5000, 2, generator=torch.Generator().manual_seed(0))
    )
    assert bad["modes_covered"] == 1
    assert bad["mode_kl"] == pytest.approx(math.log(25), rel=1e-6)
    assert bad["fd_2d"] > 1.5 and bad["mmd_rbf"] > 0.2 and bad["mmd_poly2"] > 0.2 and bad["mmd_poly2_std"] > 0.2


def test_toy_datamodule_evaluate_without_centres(tmp_path):
    dm = ToyDataModule(
        SwissRoll(), n_train=512, n_val=64, n_eval=1000, batch_size=64, mmd_max_points=500
    )
    m = data_metrics(dm, SwissRoll().sample(1000, torch.Generator().manual_seed(5)))
    assert set(m) == {"fd_2d", "mmd_poly2", "mmd_poly2_std", "mmd_rbf"}
    assert m["fd_2d"] < 0.05
    png = dm.save_samples(torch.randn(100, 2), tmp_path, stem="roll")
    assert png.is_file()


def test_toy_datamodule_save_samples(tmp_path):
    dm = _toy_dm()
    x = dm.distribution.sample(300, torch.Generator().manual_seed(1))
    png = dm.save_samples(x, tmp_path / "out", stem="s1", title="t")
    assert png == tmp_path / "out" / "s1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(tmp_path / "out" / "s1.npz") as f:
        np.testing.assert_array_equal(f["samples"], x.numpy())


@pytest.mark.parametrize(
    "kw",
    [
        {"batch_size": 0},
        {"batch_size": 4096},  # larger than n_train
        {"n_train": 0},
        {"n_val": -1},
        {"n_eval": 1.5},
        {"num_workers": -1},
        {"data_dim": 3},
    ],
)
def test_toy_datamodule_invalid_config(kw):
    with pytest.raises(ConfigError):
        _toy_dm(**kw)


# --------------------------------------------------------------------------------------------
# ImageDataModule
# --------------------------------------------------------------------------------------------


def _fake_reader(n_train=40, n_test=12, c=1, h=6, w=6):
    rng = np.random.default_rng(0)
    data = {
        "train": rng.integers(0, 256, (n_train, c, h, w), dtype=np.uint8),
        "test": rng.integers(0, 256, (n_test, c, h, w), dtype=np.uint8),
    }
    data["train"][0] = 0
    data["train"][1] = 255

    def reader(split):
        return data[split], np.zeros(len(data[split]), np.int64)

    return reader, data


def test_image_datamodule_digits():
    dm = ImageDataModule(
        functools.partial(read_digits, None),
        batch_size=64,
        subset=256,
        val_size=100,
        channels=1,
        image_size=8,
    )
    dm.setup()
    assert dm.data_shape == (1, 8, 8)
    batches = list(dm.train_dataloader())
    assert len(batches) == 4
    for b in batches:
        assert b.shape == (64, 1, 8, 8) and b.dtype == torch.float32
        assert float(b.min()) >= -1.0 and float(b.max()) <= 1.0
    assert float(torch.cat(batches).min()) == -1.0 and float(torch.cat(batches).max()) == 1.0
    val = torch.cat(list(dm.val_dataloader()))
    assert val.shape == (100, 1, 8, 8)
    xte, _ = read_digits(split="test")
    torch.testing.assert_close(val, torch.from_numpy(xte[:100]).float() / 127.5 - 1)


def test_image_datamodule_values_exact():
    reader, data = _fake_reader()
    dm = ImageDataModule(reader, batch_size=8, val_size=5)
    dm.setup()
    first = dm.train_set[0]
    assert torch.equal(first, torch.full((1, 6, 6), -1.0))
    assert torch.equal(dm.train_set[1], torch.full((1, 6, 6), 1.0))
    got = dm.train_set.__getitems__(list(range(40)))
    torch.testing.assert_close(got, torch.from_numpy(data["train"]).float() / 127.5 - 1)
    assert len(dm.val_set) == 5


def test_image_datamodule_pad_to():
    reader, data = _fake_reader(h=6, w=6)
    dm = ImageDataModule(reader, batch_size=8, pad_to=10, image_size=10, channels=1)
    assert dm.data_shape == (1, 10, 10)
    x = dm.train_set.__getitems__(list(range(40)))
    assert x.shape == (40, 1, 10, 10)
    inner = x[:, :, 2:8, 2:8]
    torch.testing.assert_close(inner, torch.from_numpy(data["train"]).float() / 127.5 - 1)
    border = torch.ones(10, 10, dtype=torch.bool)
    border[2:8, 2:8] = False
    assert (x[:, :, border] == -1.0).all()
    # odd padding: 6 -> 9 puts 1 before and 2 after
    dm2 = ImageDataModule(reader, batch_size=8, pad_to=9)
    dm2.setup()
    x2 = dm2.train_set.__getitems__([1])  # image 1 is all 255 -> +1
    assert dm2.data_shape == (1, 9, 9)
    assert (x2[0, 0, 1:7, 1:7] == 1.0).all()
    assert (x2[0, 0, 0] == -1.0).all() and (x2[0, 0, 7:] == -1.0).all()
    assert (x2[0, 0, :, 0] == -1.0).all() and (x2[0, 0, :, 7:] == -1.0).all()


def test_image_datamodule_hflip():
    reader, data = _fake_reader(n_train=64)
    dm = ImageDataModule(reader, batch_size=64, hflip=True)
    dm.setup()
    torch.manual_seed(0)
    x = next(iter(dm.train_dataloader()))
    ref = torch.from_numpy(data["train"]).float() / 127.5 - 1
    # every image in the (shuffled) batch is one of the originals, flipped or not; some flipped
    flat_ref = {tuple(r.flatten().tolist()): i for i, r in enumerate(ref)}
    flat_flip = {tuple(r.flip(-1).flatten().tolist()): i for i, r in enumerate(ref)}
    n_flipped = 0
    for img in x:
        key = tuple(img.flatten().tolist())
        assert key in flat_ref or key in flat_flip
        n_flipped += key not in flat_ref
    assert 10 < n_flipped < 54
    # validation images are never flipped
    assert torch.equal(
        dm.val_set.__getitems__([0, 1]), torch.from_numpy(data["test"][:2]).float() / 127.5 - 1
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"channels": 3},
        {"image_size": 8},
        {"pad_to": 10, "image_size": 6},
    ],
)
def test_image_datamodule_shape_mismatch(kw):
    reader, _ = _fake_reader(c=1, h=6, w=6)
    dm = ImageDataModule(reader, batch_size=8, **kw)
    with pytest.raises(ConfigError, match="channels|image_size"):
        dm.setup()


def test_image_datamodule_invalid_config():
    reader, _ = _fake_reader()
    with pytest.raises(ConfigError, match="subset"):
        ImageDataModule(reader, batch_size=32, subset=16)
    with pytest.raises(ConfigError, match="batch_size"):
        ImageDataModule(reader, batch_size=0)
    with pytest.raises(ConfigError, match="pad_to"):
        ImageDataModule(reader, batch_size=8, pad_to=4).setup()


def test_image_datamodule_reader_contract():
    def float_reader(split):
        return np.zeros((4, 1, 6, 6), np.float32), np.zeros(4, np.int64)

    def flat_reader(split):
        return np.zeros((4, 36), np.uint8), np.zeros(4, np.int64)

    for r in (float_reader, flat_reader):
        with pytest.raises(DataError, match="expected uint8"):
            ImageDataModule(r, batch_size=2).setup()


def test_image_datamodule_subset():
    reader, data = _fake_reader(n_train=40)
    dm = ImageDataModule(reader, batch_size=8, subset=16)
    dm.setup()
    assert len(dm.train_set) == 16
    assert len(list(dm.train_dataloader())) == 2


@pytest.mark.parametrize("channels", [1, 3])
def test_image_datamodule_save_samples_and_evaluate(tmp_path, channels):
    reader, _ = _fake_reader(c=channels)
    dm = ImageDataModule(reader, batch_size=8)
    s = torch.linspace(-1.5, 1.5, 5 * channels * 36).reshape(5, channels, 6, 6)
    png = dm.save_samples(s, tmp_path, stem="img", title="x")
    assert png == tmp_path / "img.png" and png.read_bytes()[:4] == b"\x89PNG"
    with np.load(tmp_path / "img.npz") as f:
        saved = f["samples"]
    assert saved.dtype == np.uint8 and saved.shape == (5, channels, 6, 6)
    assert saved.min() == 0 and saved.max() == 255  # clamped to [-1, 1] before conversion
    expected = ((s.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(saved, expected)
    m = data_metrics(dm, s)
    assert set(m) == {"sample_mean", "sample_std", "frac_out_of_range"}
    assert m["sample_mean"] == pytest.approx(0.0, abs=1e-6)
    assert m["frac_out_of_range"] == pytest.approx(float(((s < -1) | (s > 1)).float().mean()))


def test_toy_normalize_trains_on_unit_scale_and_evaluates_in_data_units(tmp_path):
    grid = GaussianGrid(n=5, spacing=5.0, offset=0.0, std=1 / 3, clamp=1.0)  # the SIDDM authors' grid
    raw = ToyDataModule(grid, n_train=20000, n_val=64, n_eval=4000, batch_size=64)
    norm = ToyDataModule(grid, n_train=20000, n_val=64, n_eval=4000, batch_size=64, normalize=True)
    raw.setup(), norm.setup()
    x_raw, x_norm = raw.train_set.data, norm.train_set.data
    # same points, affinely mapped: zero mean, unit mean variance (one scalar scale keeps the grid square)
    assert torch.allclose(x_norm.mean(0), torch.zeros(2), atol=1e-5)
    assert float(x_norm.var(0).mean()) == pytest.approx(1.0, rel=1e-3)
    assert torch.allclose(norm.to_data_space(x_norm), x_raw, atol=1e-4)
    assert float(norm.scale) == pytest.approx(float(x_raw.std(0).pow(2).mean().sqrt()), rel=1e-6)
    assert torch.equal(raw.reference, norm.reference)  # metrics compare in the grid's own units
    # evaluating model-space samples of the data itself gives the data's own metrics
    m = data_metrics(norm, norm.to_model_space(grid.sample(4000, torch.Generator().manual_seed(3))))
    assert m["modes_covered"] == 25 and m["fd_2d"] < 0.5  # sampling noise of 4000 points, variance ~50
    # raw samples read as model-space points land far off the grid
    assert data_metrics(norm, grid.sample(4000, torch.Generator().manual_seed(3)))["fd_2d"] > 10
    norm.save_samples(x_norm[:100], tmp_path, stem="s")
    assert np.allclose(np.load(tmp_path / "s.npz")["samples"], x_raw[:100].numpy(), atol=1e-4)
    assert torch.equal(raw.to_data_space(x_raw), x_raw)  # the identity without normalize


def test_mmd_poly2_std_is_the_released_codes_standardised_mmd():
    """mmd_poly2_std standardises both sets by the reference's scalar mean and std (np.mean / np.std over
    all coordinates, as the released SIDDM evaluation) before the degree-2 polynomial MMD."""
    from siddm_lab.metrics.toy import mmd

    dm = _toy_dm()
    x = dm.distribution.sample(3000, torch.Generator().manual_seed(5)) * 1.3 + 0.2
    ref = dm.reference[: dm.mmd_max_points].double()
    mu, sd = float(dm.reference.double().mean()), float(dm.reference.double().numpy().std())
    expected = mmd((x[: dm.mmd_max_points].double() - mu) / sd, (ref - mu) / sd, kernel="poly", degree=2)
    assert data_metrics(dm, x)["mmd_poly2_std"] == pytest.approx(expected, rel=1e-9)


def test_balanced_grid_has_equal_modes_in_random_order():
    from siddm_lab.data import GaussianGrid

    grid = GaussianGrid(n=5, spacing=5.0, offset=0.0, std=1 / 3, clamp=1.0, balanced=True)
    x = grid.sample(2500, torch.Generator().manual_seed(0))
    nearest = torch.cdist(x, grid.centers).argmin(1)
    assert torch.equal(torch.bincount(nearest, minlength=25), torch.full((25,), 100))
    assert len(set(nearest[:50].tolist())) > 10  # not in mode order
    assert float((x - grid.centers[nearest]).abs().max()) <= 1.0  # offsets clamped to [-1, 1]


# --------------------------------------------------------------------------------------------
# Image folders: the test split is never the training images unless asked for
# --------------------------------------------------------------------------------------------


def _flat_folder(root: Path, n: int = 20) -> Path:
    for i in range(n):  # image i is filled with the value 10 * i: the pixels tell which file it was
        _png(root / ("a" if i % 2 else "b") / f"{i:02d}.png", np.full((8, 8, 3), 10 * i, np.uint8))
    return root


def test_image_folder_without_test_split_is_an_error_not_the_training_images(tmp_path):
    root = _flat_folder(tmp_path / "imgs")
    x, _ = read_image_folder(root, "train", image_size=8)
    assert len(x) == 20  # a flat folder is the training split
    with pytest.raises(DataError) as e:
        read_image_folder(root, "test", image_size=8)
    msg = str(e.value)
    assert str(root) in msg and "<root>/train/" in msg and "<root>/test/" in msg, msg
    assert "dataset.reader.test_fraction" in msg and "dataset.reader.test_from_train" in msg, msg
    _png(tmp_path / "split" / "train" / "a" / "1.png", np.zeros((8, 8, 3), np.uint8))  # train/ but no test/
    with pytest.raises(DataError, match=r"no test/ sub-folder"):
        read_image_folder(tmp_path / "split", "test", image_size=8)


def test_image_datamodule_on_a_flat_folder_fails_before_training(tmp_path):
    root = _flat_folder(tmp_path / "imgs")
    dm = ImageDataModule(functools.partial(read_image_folder, root, image_size=8), batch_size=4, val_size=4)
    with pytest.raises(DataError, match="no test split"):
        dm.setup()


def test_image_folder_test_fraction_holds_out_a_fixed_disjoint_part(tmp_path):
    root = _flat_folder(tmp_path / "imgs")
    read = functools.partial(read_image_folder, root, image_size=8, channels=1, test_fraction=0.25)
    (xtr, _), (xte, yte) = read(split="train"), read(split="test")
    assert len(xtr) == 15 and len(xte) == 5
    train_ids, test_ids = {int(v) // 10 for v in xtr[:, 0, 0, 0]}, {int(v) // 10 for v in xte[:, 0, 0, 0]}
    assert not train_ids & test_ids and train_ids | test_ids == set(range(20))
    assert all(y == (i % 2 == 0) for i, y in zip(sorted(test_ids), yte[np.argsort(xte[:, 0, 0, 0])]))  # a=0, b=1
    np.testing.assert_array_equal(read(split="test")[0], xte)  # the same images every time
    # with train/ but no test/ the hold-out is taken from train/
    for i in range(4):
        _png(tmp_path / "split" / "train" / f"{i}.png", np.full((8, 8, 3), 10 * i, np.uint8))
    held = read_image_folder(tmp_path / "split", "test", image_size=8, test_fraction=0.5)[0]
    kept = read_image_folder(tmp_path / "split", "train", image_size=8, test_fraction=0.5)[0]
    assert len(held) == len(kept) == 2 and not {int(v) for v in held[:, 0, 0, 0]} & {int(v) for v in kept[:, 0, 0, 0]}


def test_image_folder_test_from_train_is_explicit(tmp_path):
    root = _flat_folder(tmp_path / "imgs")
    xtr, _ = read_image_folder(root, "train", image_size=8, test_from_train=True)
    xte, _ = read_image_folder(root, "test", image_size=8, test_from_train=True)
    np.testing.assert_array_equal(xtr, xte)


@pytest.mark.parametrize(
    "kw,expected",
    [
        ({"test_fraction": 1.5}, "dataset.reader.test_fraction=1.5 is invalid: expected a number in (0, 1)"),
        ({"test_fraction": "a"}, "dataset.reader.test_fraction='a' is invalid"),
        ({"test_fraction": 0.9}, "leaves no training image"),
        ({"test_fraction": 0.01}, "holds out no image"),
        ({"test_fraction": 0.5, "test_from_train": True}, "not both"),
    ],
)
def test_image_folder_hold_out_options_are_checked(tmp_path, kw, expected):
    root = _flat_folder(tmp_path / "imgs", n=4)
    with pytest.raises((ConfigError, DataError), match=re.escape(expected)):
        read_image_folder(root, "test", image_size=8, **kw)


def test_image_folder_with_its_own_test_split_refuses_hold_out_options(tmp_path):
    _png(tmp_path / "train" / "1.png", np.zeros((8, 8, 3), np.uint8))
    _png(tmp_path / "test" / "2.png", np.zeros((8, 8, 3), np.uint8))
    for kw in ({"test_fraction": 0.5}, {"test_from_train": True}):
        with pytest.raises(ConfigError, match="has its own test/ split"):
            read_image_folder(tmp_path, "train", image_size=8, **kw)


def test_data_messages_name_the_config_keys(tmp_path):
    """The keys that messages tell the user to set are the keys of conf/dataset/*.yaml."""
    p = tmp_path / "f.bin"
    p.write_bytes(b"hello world")
    for kw in ({"md5": "0" * 32, "size": 11, "verify": "md5"}, {"md5": None, "size": 12, "verify": "size"},
               {"md5": None, "size": None, "verify": "crc"}):
        with pytest.raises(DataError) as e:
            check_file(p, what="X", **kw)
        assert "dataset.reader.verify" in str(e.value) and "dataset.verify" not in str(e.value)
    _png(tmp_path / "imgs" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=re.escape("dataset.channels=4 is not supported")):
        read_image_folder(tmp_path / "imgs", "train", channels=4)
    reader, _ = _fake_reader(c=1, h=6, w=6)
    with pytest.raises(ConfigError, match=re.escape("dataset.channels=3, dataset.image_size=None")):
        ImageDataModule(reader, batch_size=8, channels=3).setup()


def test_image_metric_reference_split_and_size():
    """The FID reference: the test split's first reference_size images by default; DDGAN's protocol takes
    the whole train split (reference_split=train, reference_size=null). Bad values are refused by name."""
    reader, data = _fake_reader()
    dm = ImageDataModule(reader, batch_size=8, metrics={"names": ["fid"], "reference_size": 10})
    assert torch.equal(dm.metric_reference, torch.from_numpy(data["test"][:10]))
    dm = ImageDataModule(reader, batch_size=8, metrics={"names": ["fid"], "reference_split": "train",
                                                        "reference_size": None, "resize": "pytorch_fid"})
    assert torch.equal(dm.metric_reference, torch.from_numpy(data["train"])) and dm.inception_resize == "pytorch_fid"
    with pytest.raises(ConfigError, match="reference_split='val' is unknown; allowed: train, test"):
        ImageDataModule(reader, batch_size=8, metrics={"reference_split": "val"})
    with pytest.raises(ConfigError, match="reference_size=1 is invalid; allowed: an integer >= 2, or null"):
        ImageDataModule(reader, batch_size=8, metrics={"reference_size": 1})
