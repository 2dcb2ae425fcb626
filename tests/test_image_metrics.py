"""Image metrics: Fréchet distance vs torchmetrics, KID/IS/PRC on a stand-in extractor, Inception-weights
errors, and the MNIST classifier behind ``fd_mnist_classifier``."""

import hashlib
import math
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from siddm_lab.errors import CheckpointError, ConfigError
from siddm_lab.metrics.frechet import frechet_distance_from_features
from siddm_lab.metrics.image import (
    INCEPTION_WEIGHTS_SHA256,
    METRIC_NAMES,
    compute_image_metrics,
    fd_mnist_classifier,
    inception_metrics,
)
from siddm_lab.metrics.mnist_classifier import (
    SHIPPED_CLASSIFIER_PATH,
    SHIPPED_CLASSIFIER_SHA256,
    MNISTClassifier,
    default_classifier_path,
    load_classifier,
    save_classifier,
    shipped_classifier_record,
    to_model_space,
    train_classifier,
)


class StandIn(nn.Module):
    """Stands in for Inception: uint8 [N, 3, H, W] -> 8x8 average pool -> fixed random projection -> [N, 16]."""

    def __init__(self, dim: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(3 * 64, dim, generator=g))
        self.num_features = dim

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3, (x.dtype, x.shape)
        return F.adaptive_avg_pool2d(x.float() / 255, 8).flatten(1) @ self.w / 8


def blobs(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """uint8 [n, 1, 32, 32]: a bright Gaussian blob at a random place on a dark background."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, 1, 1, generator=g) * 16 + 8 + shift
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    r2 = (yy - centre[:, 0]) ** 2 + (xx - centre[:, 1]) ** 2  # [n, 32, 32]
    img = 255 * torch.exp(-r2 / 18) + torch.rand(n, 32, 32, generator=g) * 20
    return img.clamp(0, 255).to(torch.uint8)[:, None]


@pytest.fixture(scope="module")
def sets():
    return blobs(300, 0), blobs(300, 1), blobs(300, 2, shift=5.0)


# --------------------------------------------------------------------------- Fréchet / KID / IS / PRC on a stand-in


def test_frechet_matches_torchmetrics_fid(sets):
    from torchmetrics.image.fid import FrechetInceptionDistance

    ref, _, shifted = sets
    net = StandIn()
    rgb = lambda x: x.expand(-1, 3, -1, -1)  # noqa: E731
    ours = frechet_distance_from_features(net(rgb(shifted)), net(rgb(ref)))
    tm = FrechetInceptionDistance(feature=net)
    tm.update(rgb(ref), real=True)
    tm.update(rgb(shifted), real=False)
    theirs = float(tm.compute())
    assert ours > 1e-3
    assert ours == pytest.approx(theirs, rel=1e-3)
    # The library entry point (grayscale repeated to 3 channels, features fed to torchmetrics) agrees too.
    got = inception_metrics(shifted, ref, metrics=["fid"], feature_extractor=net)["fid"]
    assert got == pytest.approx(theirs, rel=1e-3)


def test_fid_same_distribution_much_smaller_than_shifted(sets):
    ref, same, shifted = sets
    net = StandIn()
    fid_same = inception_metrics(same, ref, metrics=["fid"], feature_extractor=net)["fid"]
    fid_shift = inception_metrics(shifted, ref, metrics=["fid"], feature_extractor=net)["fid"]
    assert 0 <= fid_same < 0.1 * fid_shift


def test_kid_zero_for_identical_positive_for_shifted(sets):
    ref, _, shifted = sets
    net = StandIn()
    same = inception_metrics(ref, ref, metrics=["kid"], feature_extractor=net, kid_subset_size=100)
    shift = inception_metrics(shifted, ref, metrics=["kid"], feature_extractor=net, kid_subset_size=100)
    assert set(same) == {"kid_mean", "kid_std"}
    assert shift["kid_mean"] > 3 * shift["kid_std"] > 0
    assert abs(same["kid_mean"]) < 0.1 * shift["kid_mean"]
    # Seeded: the same call gives the same random subsets.
    again = inception_metrics(shifted, ref, metrics=["kid"], feature_extractor=net, kid_subset_size=100)
    assert again == shift


def _closed_form_is(logits: torch.Tensor) -> float:
    p = logits.double().softmax(1)
    py = p.mean(0, keepdim=True)
    return math.exp((p * (p.log() - py.log())).sum(1).mean().item())


@pytest.mark.filterwarnings("ignore:std\\(\\)")  # torchmetrics' IS std of a single split
@pytest.mark.filterwarnings("ignore:Metric `InceptionScore` will save")
def test_inception_score_matches_closed_form(sets):
    from torchmetrics.image.inception import InceptionScore

    ref, _, shifted = sets
    images = torch.cat([ref, shifted])
    net = StandIn()
    logits = net(images.expand(-1, 3, -1, -1)) * 20  # sharper class posteriors: IS well above 1
    expected = _closed_form_is(logits)
    assert expected > 1.5

    class Sharp(nn.Module):
        def forward(self, x):
            return net(x) * 20

    got = inception_metrics(images, None, metrics=["is"], feature_extractor=Sharp(), is_splits=1)
    assert got["is_mean"] == pytest.approx(expected, rel=1e-4)
    assert got["is_std"] == 0.0
    tm = InceptionScore(feature=Sharp(), splits=1)
    tm.update(images.expand(-1, 3, -1, -1))
    assert float(tm.compute()[0]) == pytest.approx(expected, rel=1e-4)
    split = inception_metrics(images, None, metrics=["is"], feature_extractor=Sharp(), is_splits=5)
    assert split["is_std"] > 0


def test_precision_recall(sets):
    ref, same, shifted = sets
    net = StandIn()
    ident = inception_metrics(ref, ref, metrics=["prc"], feature_extractor=net)
    assert ident == {"precision": 1.0, "recall": 1.0, "f_score": pytest.approx(1.0)}
    # All samples collapsed onto one blank image: no recall; a far-away collapse also has no precision.
    blank = torch.full_like(ref, 255)
    collapsed = inception_metrics(blank, ref, metrics=["prc"], feature_extractor=net)
    assert collapsed["recall"] == 0.0 and collapsed["precision"] == 0.0
    other = inception_metrics(same, ref, metrics=["prc"], feature_extractor=net)
    assert other["precision"] > 0.5 and other["recall"] > 0.5


def test_uint8_and_model_space_inputs_agree(sets):
    ref, _, shifted = sets
    net = StandIn()
    a = inception_metrics(shifted, ref, metrics=["fid", "kid", "is"], feature_extractor=net, kid_subset_size=50)
    b = inception_metrics(shifted.float() / 127.5 - 1, ref.float() / 127.5 - 1, metrics=["fid", "kid", "is"],
                          feature_extractor=net, kid_subset_size=50)
    assert set(a) == {"fid", "kid_mean", "kid_std", "is_mean", "is_std"}
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-8), k


def test_inception_metrics_argument_errors(sets):
    ref, _, _ = sets
    with pytest.raises(ConfigError, match="allowed: fid, is, kid, prc"):
        inception_metrics(ref, ref, metrics=["fid", "lpips"], feature_extractor=StandIn())
    with pytest.raises(ConfigError, match="kid_subset_size"):
        inception_metrics(ref, ref, metrics=["kid"], feature_extractor=StandIn(), kid_subset_size=1000)
    with pytest.raises(ValueError, match="reference"):
        inception_metrics(ref, None, metrics=["fid"], feature_extractor=StandIn())


# --------------------------------------------------------------------------- Inception weights


def test_missing_weights_path_names_config_key(tmp_path, sets):
    ref, _, _ = sets
    missing = tmp_path / "nope" / "pt_inception.pth"
    with pytest.raises(ConfigError, match="metrics.inception_weights") as e:
        inception_metrics(ref, ref, metrics=["fid"], weights_path=missing)
    assert str(missing) in str(e.value)


def test_weights_with_wrong_hash_rejected(tmp_path, sets):
    ref, _, _ = sets
    bad = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="sha256") as e:
        inception_metrics(ref, ref, metrics=["kid"], weights_path=bad)
    assert INCEPTION_WEIGHTS_SHA256 in str(e.value) and "metrics.inception_weights" in str(e.value)


def test_offline_download_failure_is_config_error(monkeypatch, sets):
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def offline(*args, **kwargs):
        raise urllib.error.URLError("simulated: no network")

    monkeypatch.setattr(fe, "load_state_dict_from_url", offline)
    ref, _, _ = sets
    with pytest.raises(ConfigError, match="could not be downloaded") as e:
        compute_image_metrics(ref, ref, ["fid", "is"])
    msg = str(e.value)
    assert "metrics.inception_weights=" in msg and "simulated: no network" in msg and "6726825d" in msg


# --------------------------------------------------------------------------- compute_image_metrics


def test_compute_image_metrics_unknown_name(sets):
    ref, _, _ = sets
    with pytest.raises(ConfigError) as e:
        compute_image_metrics(ref, ref, ["fid", "inception_score"], feature_extractor=StandIn())
    for name in METRIC_NAMES:
        assert name in str(e.value)
    assert "inception_score" in str(e.value)


def test_compute_image_metrics_routes_all(tmp_path, sets):
    ref, _, shifted = sets
    torch.manual_seed(0)
    clf = MNISTClassifier().eval()
    path = save_classifier(clf, tmp_path / "clf.pt")
    net = StandIn()
    got = compute_image_metrics(shifted, ref, ["fd_mnist_classifier", "fid", "is", "kid", "prc"],
                                classifier_path=path, feature_extractor=net, kid_subset_size=100)
    assert set(got) == {"fd_mnist_classifier", "fid", "is_mean", "is_std", "kid_mean", "kid_std",
                        "precision", "recall", "f_score"}
    assert got["fd_mnist_classifier"] == pytest.approx(fd_mnist_classifier(shifted, ref, clf), rel=1e-6)
    direct = inception_metrics(shifted, ref, metrics=["fid", "is", "kid", "prc"], feature_extractor=net,
                               kid_subset_size=100)
    for k, v in direct.items():
        assert got[k] == pytest.approx(v, rel=1e-6), k
    with pytest.raises(CheckpointError, match="missing.pt does not exist.*mnist_classifier"):
        compute_image_metrics(shifted, ref, ["fd_mnist_classifier"], classifier_path=tmp_path / "missing.pt")


# --------------------------------------------------------------------------- MNIST classifier: checkpoints


def test_classifier_shapes():
    m = MNISTClassifier().eval()
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    assert m(x).shape == (5, 10) and m.features(x).shape == (5, 128)
    with pytest.raises(ValueError, match="32, 32"):
        m(torch.zeros(2, 1, 28, 28))


def test_to_model_space_pads_like_datamodule():
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    y = to_model_space(x)
    assert y.shape == (2, 1, 32, 32)
    assert (y[..., :2, :] == -1).all() and (y[..., :, -2:] == -1).all() and (y[..., 2:30, 2:30] == 1).all()


def test_save_load_round_trip_identical_logits(tmp_path):
    torch.manual_seed(1)
    m = MNISTClassifier()
    m.train()
    m(torch.rand(64, 1, 32, 32) * 2 - 1)  # moves BatchNorm running statistics away from their defaults
    m.eval()
    path = save_classifier(m, tmp_path / "sub" / "clf.pt", test_accuracy=0.5, config={"seed": 1})
    loaded = load_classifier(path)
    x = torch.rand(16, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
        assert not torch.equal(loaded(x), MNISTClassifier().eval()(x))
    assert loaded.test_accuracy == 0.5 and not loaded.training
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"state_dict", "test_accuracy", "config"} and ckpt["config"]["seed"] == 1


def argparse_namespace():
    import argparse

    return argparse.Namespace(a=1)


def test_load_missing_or_corrupt_checkpoint(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match="does not exist") as e:
        load_classifier(missing)
    assert str(missing) in str(e.value) and "python -m siddm_lab.metrics.mnist_classifier" in str(e.value)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pt") as e:
        load_classifier(garbage)
    assert "weights_only" not in str(e.value) and "corrupt" in str(e.value)  # no advice to load it unsafely
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "config": argparse_namespace()}, pickled)
    with pytest.raises(CheckpointError, match="pickled 'argparse.Namespace' object") as e:
        load_classifier(pickled)
    assert "weights_only" not in str(e.value)

    wrong = tmp_path / "wrong.pt"
    torch.save({"weights": torch.zeros(3)}, wrong)
    with pytest.raises(CheckpointError, match="state_dict"):
        load_classifier(wrong)

    mismatched = tmp_path / "mismatched.pt"
    torch.save({"state_dict": {"conv.0.weight": torch.zeros(3)}, "config": {}}, mismatched)
    with pytest.raises(CheckpointError, match="does not match"):
        load_classifier(mismatched)


def test_default_classifier_path_is_the_shipped_one(monkeypatch, tmp_path):
    """A classifier in the user's cache is never used unless named: the default is the shipped file."""
    monkeypatch.setenv("SIDDM_CACHE_DIR", str(tmp_path))
    (tmp_path / "mnist_classifier.pt").write_bytes(b"a user's own (here: broken) classifier")
    assert default_classifier_path() == SHIPPED_CLASSIFIER_PATH
    assert load_classifier().sha256 == SHIPPED_CLASSIFIER_SHA256
    monkeypatch.delenv("SIDDM_CACHE_DIR")
    assert default_classifier_path() == SHIPPED_CLASSIFIER_PATH


def test_shipped_classifier_loads_and_matches_its_record():
    assert SHIPPED_CLASSIFIER_PATH.parts[-4:] == ("siddm_lab", "metrics", "weights", "mnist_classifier.pt")
    assert hashlib.sha256(SHIPPED_CLASSIFIER_PATH.read_bytes()).hexdigest() == SHIPPED_CLASSIFIER_SHA256
    record = shipped_classifier_record()
    assert record["sha256"] == SHIPPED_CLASSIFIER_SHA256 and record["bytes"] == SHIPPED_CLASSIFIER_PATH.stat().st_size
    assert "--out" in record["train_command"] and record["train_config"]["seed"] == 0
    m = load_classifier()
    assert not m.training and m.path == str(SHIPPED_CLASSIFIER_PATH) and m.sha256 == SHIPPED_CLASSIFIER_SHA256
    assert m.test_accuracy == record["test_accuracy"] >= 0.99
    assert sum(p.numel() for p in m.parameters()) == record["parameters"]
    x = torch.rand(6, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert m.features(x).shape == (6, 128) and m(x).shape == (6, 10)
    # plain tensors and containers only: loads with weights_only=True
    ckpt = torch.load(SHIPPED_CLASSIFIER_PATH, weights_only=True)
    assert set(ckpt) == {"state_dict", "test_accuracy", "config"}


def test_metrics_default_to_the_shipped_classifier(sets):
    ref, _, shifted = sets
    got = compute_image_metrics(shifted, ref, ["fd_mnist_classifier", "mnist_digits"])
    assert {"fd_mnist_classifier", "digit_classes", "digit_tv", "digit_confidence"} <= set(got)
    assert got["fd_mnist_classifier"] == pytest.approx(fd_mnist_classifier(shifted, ref, load_classifier()), rel=1e-6)
    assert got["fd_mnist_classifier"] == pytest.approx(fd_mnist_classifier(shifted, ref, SHIPPED_CLASSIFIER_PATH),
                                                       rel=1e-6)


def test_a_tampered_or_missing_shipped_classifier_is_refused(monkeypatch, tmp_path):
    import siddm_lab.metrics.mnist_classifier as mc

    data = bytearray(SHIPPED_CLASSIFIER_PATH.read_bytes())
    copy = tmp_path / "copy.pt"
    copy.write_bytes(data)
    # an explicit path is loaded as given (no sha256 to check it against): the same features
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(load_classifier(copy).features(x), load_classifier().features(x))

    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    tampered = tmp_path / "weights" / "mnist_classifier.pt"
    tampered.parent.mkdir()
    tampered.write_bytes(data)
    monkeypatch.setattr(mc, "SHIPPED_CLASSIFIER_PATH", tampered)
    for path in (None, tampered):  # by default, or named explicitly
        with pytest.raises(CheckpointError, match="corrupt or was modified") as e:
            load_classifier(path)
        assert str(tampered) in str(e.value) and SHIPPED_CLASSIFIER_SHA256 in str(e.value)
        assert "git checkout" in str(e.value) and "classifier_path" in str(e.value)
    with pytest.raises(CheckpointError, match="corrupt or was modified"):
        compute_image_metrics(torch.zeros(4, 1, 32, 32, dtype=torch.uint8), torch.zeros(4, 1, 32, 32,
                              dtype=torch.uint8), ["fd_mnist_classifier"])
    tampered.unlink()
    with pytest.raises(CheckpointError, match="shipped MNIST classifier .* is missing") as e:
        load_classifier()
    assert str(tampered) in str(e.value)


def test_training_never_writes_the_shipped_classifier(tmp_path, capsys):
    from siddm_lab.metrics.mnist_classifier import main

    with pytest.raises(ConfigError, match="give the path"):
        train_classifier(tmp_path, None)
    with pytest.raises(ConfigError, match="never overwritten"):
        train_classifier(tmp_path, SHIPPED_CLASSIFIER_PATH)
    with pytest.raises(SystemExit):  # --out is required
        main(["--data-dir", str(tmp_path)])
    assert "--out" in capsys.readouterr().err
    assert hashlib.sha256(SHIPPED_CLASSIFIER_PATH.read_bytes()).hexdigest() == SHIPPED_CLASSIFIER_SHA256


def test_cli_bad_data_dir(tmp_path, capsys):
    from siddm_lab.metrics.mnist_classifier import main

    with pytest.raises(SystemExit, match="error: .*does not exist"):
        main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.pt")])
    assert not (tmp_path / "c.pt").exists()


# --------------------------------------------------------------------------- MNIST classifier: real data


@pytest.fixture(scope="module")
def small_classifier(tmp_path_factory):
    from tests.conftest import shared_data_dir

    root = shared_data_dir()
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST not found under {root} (set SIDDM_DATA_DIR)")
    path = tmp_path_factory.mktemp("clf") / "small.pt"
    res = train_classifier(root, path, epochs=2, subset=3000, test_subset=1000, batch_size=64, seed=0,
                           verify="size")
    return path, res


def test_small_classifier_trains_and_reloads(small_classifier, mnist_root):
    from siddm_lab.data.images import read_mnist
    from siddm_lab.metrics.mnist_classifier import evaluate_accuracy

    path, res = small_classifier
    assert res["test_accuracy"] > 0.85
    model = load_classifier(path)
    images, labels = read_mnist(mnist_root, "test", verify="size")
    acc = evaluate_accuracy(model, to_model_space(images[:1000]), torch.from_numpy(labels[:1000]))
    assert acc == res["test_accuracy"]  # the reloaded model reproduces the accuracy measured before saving


def test_training_is_reproducible(small_classifier, tmp_path, mnist_root):
    path, res = small_classifier
    res2 = train_classifier(mnist_root, tmp_path / "again.pt", epochs=2, subset=3000, test_subset=1000,
                            batch_size=64, seed=0, verify="size")
    a = torch.load(path, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "again.pt", weights_only=True)["state_dict"]
    assert res2["test_accuracy"] == res["test_accuracy"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fd_mnist_classifier_real_vs_noise(small_classifier, mnist_root):
    from siddm_lab.data.images import read_mnist

    path, _ = small_classifier
    clf = load_classifier(path)
    images, _ = read_mnist(mnist_root, "test", verify="size")
    x = F.pad(torch.from_numpy(images[:2000]), (2, 2, 2, 2))  # uint8 [N, 1, 32, 32]
    a, b = x[:1000], x[1000:]
    fd_halves = fd_mnist_classifier(a, b, clf)
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(1000, 1, 32, 32), dtype=np.uint8))
    fd_noise = fd_mnist_classifier(noise, b, clf)
    assert 0 <= fd_halves < 0.05 * fd_noise
    # Same value from model-space floats, from unpadded 28x28 images and from a checkpoint path.
    assert fd_mnist_classifier(a.float() / 127.5 - 1, b, clf) == pytest.approx(fd_halves, rel=1e-6)
    assert fd_mnist_classifier(torch.from_numpy(images[:1000]), b, clf) == pytest.approx(fd_halves, rel=1e-6)
    assert fd_mnist_classifier(a, b, path) == pytest.approx(fd_halves, rel=1e-6)


def test_mnist_digits_sees_a_dropped_digit_and_noise(small_classifier, mnist_root):
    """Real test images: all 10 digits, histograms close to the reference's and confident; the same images
    without one digit (a mode-collapsed sampler): 9 classes and a TV of about that digit's share; noise:
    low confidence."""
    from siddm_lab.data.images import read_mnist
    from siddm_lab.metrics.image import compute_image_metrics, mnist_digits

    path, _ = small_classifier
    clf = load_classifier(path)
    images, labels = read_mnist(mnist_root, "test", verify="size")
    x = F.pad(torch.from_numpy(images[:4000]), (2, 2, 2, 2))
    a, b = x[:2000], x[2000:]
    real = mnist_digits(a, b, clf)
    assert real["digit_classes"] == 10 and real["digit_tv"] < 0.05 and real["digit_confidence"] > 0.9
    no_sevens = a[torch.from_numpy(labels[:2000]) != 7]
    dropped = mnist_digits(no_sevens, b, clf)
    share = float((torch.from_numpy(labels[2000:4000]) == 7).double().mean())
    assert dropped["digit_classes"] == 9
    assert dropped["digit_tv"] == pytest.approx(share, abs=0.05)
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(500, 1, 32, 32), dtype=np.uint8))
    assert mnist_digits(noise, b, clf)["digit_confidence"] < real["digit_confidence"] - 0.2
    both = compute_image_metrics(a, b, ["fd_mnist_classifier", "mnist_digits"], classifier_path=path)
    assert both["digit_classes"] == 10 and both["digit_tv"] == pytest.approx(real["digit_tv"])
    assert both["fd_mnist_classifier"] == pytest.approx(fd_mnist_classifier(a, b, clf), rel=1e-6)


def _real_mnist_features(root, n_test, n_train):
    from siddm_lab.data.images import read_mnist
    from siddm_lab.metrics.image import mnist_classifier_features

    clf = load_classifier()
    test_images, test_labels = read_mnist(root, "test", verify="size")
    train_images, _ = read_mnist(root, "train", verify="size")
    f_test = mnist_classifier_features(torch.from_numpy(test_images[:n_test]), clf)
    f_train = mnist_classifier_features(torch.from_numpy(train_images[:n_train]), clf)
    with torch.no_grad():
        accuracy = (clf.head(f_test).argmax(1) == torch.from_numpy(test_labels[:n_test])).float().mean().item()
    return clf, f_test, f_train, accuracy, train_images


def test_shipped_classifier_on_real_mnist(mnist_root):
    """Real test images against real training images, 500 each: about 17-19 (the small-sample bias of a 128-d
    Fréchet distance; 1000 against the 10,000 test images, as in experiments/, give about 4-5), far below
    uniform noise; and the accuracy on the first 1000 test images."""
    clf, f_test, f_train, accuracy, train_images = _real_mnist_features(mnist_root, 1000, 500)
    assert accuracy >= 0.98
    fd_500 = frechet_distance_from_features(f_test[:500], f_train)
    assert 10 < fd_500 < 30
    noise = torch.randint(0, 256, (500, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert fd_mnist_classifier(noise, torch.from_numpy(train_images[:500]), clf) > 10 * fd_500


@pytest.mark.slow
def test_shipped_classifier_recorded_accuracy(mnist_root):
    """The recorded test accuracy (all 10,000 test images), and 1000 training images against them: the
    real-data level of the fd_mnist_classifier tables in experiments/ (3.9-5.0)."""
    _, f_test, f_train, accuracy, _ = _real_mnist_features(mnist_root, 10_000, 1000)
    assert accuracy == pytest.approx(shipped_classifier_record()["test_accuracy"], abs=2e-4)
    assert 3 < frechet_distance_from_features(f_train, f_test) < 7


@pytest.mark.slow
def test_full_classifier_reaches_98_percent(mnist_root, tmp_path):
    res = train_classifier(mnist_root, tmp_path / "full.pt")
    assert res["test_accuracy"] >= 0.98
    assert load_classifier(tmp_path / "full.pt").test_accuracy == res["test_accuracy"]


@pytest.mark.slow
def test_inception_path_with_local_weights_file(tmp_path, monkeypatch):
    """The real Inception-v3 code path, fed a local weights file (random weights, BatchNorm statistics fitted
    on a few images so features differ between images) whose sha256 the test declares as the expected one."""
    import hashlib

    from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3

    import siddm_lab.metrics.image as image_metrics

    weights, _ = _fake_fid_weights(tmp_path)
    monkeypatch.setattr(image_metrics, "INCEPTION_WEIGHTS_SHA256", hashlib.sha256(weights.read_bytes()).hexdigest())

    ref, shifted = blobs(8, 0), blobs(8, 2, shift=5.0)
    got = inception_metrics(shifted, ref, metrics=["fid", "is", "kid", "prc"], weights_path=weights,
                            kid_subset_size=8, is_splits=1)
    assert set(got) == {"fid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall", "f_score"}
    assert all(math.isfinite(v) for v in got.values())
    tm = FrechetInceptionDistance(feature_extractor_weights_path=str(weights))
    tm.update(ref.expand(-1, 3, -1, -1), real=True)
    tm.update(shifted.expand(-1, 3, -1, -1), real=False)
    assert got["fid"] > 1 and got["fid"] == pytest.approx(float(tm.compute()), rel=1e-3)
    # IS logits = pool3 @ fc.weight^T, as torchmetrics' default 'logits_unbiased' feature.
    x = shifted.expand(-1, 3, -1, -1)
    ext = image_metrics.build_inception(weights)
    with torch.no_grad():
        expected = NoTrainInceptionV3("inception-v3-compat", ["logits_unbiased"], str(weights))(x)
        assert torch.allclose(ext(x) @ ext.fc.weight.T, expected, atol=1e-5)


# --------------------------------------------------------------------------- the papers' FID protocol


def test_frechet_part_matches_pytorch_fid(sets):
    """Our Fréchet distance against pytorch-fid's (scipy ``sqrtm``): an independent computation."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    from siddm_lab.metrics.frechet import frechet_distance, gaussian_stats

    ref, _, shifted = sets
    net = StandIn(dim=32)
    a, b = gaussian_stats(net(shifted.expand(-1, 3, -1, -1))), gaussian_stats(net(ref.expand(-1, 3, -1, -1)))
    theirs = calculate_frechet_distance(a[0], a[1], b[0], b[1])
    assert frechet_distance(*a, *b) == pytest.approx(theirs, rel=1e-6) and theirs > 1e-3


def test_fid_against_reference_stats_file_equals_fid_against_the_images(sets, tmp_path):
    from siddm_lab.metrics.frechet import gaussian_stats

    ref, same, shifted = sets
    net = StandIn()
    mu, sigma = gaussian_stats(net(ref.expand(-1, 3, -1, -1)))
    stats = tmp_path / "ref_stats.npz"
    np.savez(stats, mu=mu, sigma=sigma)
    for x in (same, shifted):
        direct = inception_metrics(x, ref, metrics=["fid"], feature_extractor=net)["fid"]
        from_file = inception_metrics(x, None, metrics=["fid"], feature_extractor=net, reference_stats=stats)["fid"]
        assert from_file == pytest.approx(direct, rel=1e-4, abs=1e-6)
    with pytest.raises(ConfigError, match="metrics.reference_stats=.*does not exist"):
        inception_metrics(same, None, metrics=["fid"], feature_extractor=net, reference_stats=tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, mean=mu)
    with pytest.raises(ConfigError, match="not an .npz with arrays 'mu' and 'sigma'"):
        inception_metrics(same, None, metrics=["fid"], feature_extractor=net, reference_stats=bad)
    with pytest.raises(ConfigError, match="64-d statistics, the features are 16-d"):
        inception_metrics(same, None, metrics=["fid"], feature_extractor=net,
                          reference_stats=(np.zeros(64), np.eye(64)))
    with pytest.raises(ConfigError, match="metrics.resize='bicubic' is unknown; allowed: antialias, tf1, pytorch_fid"):
        inception_metrics(same, ref, metrics=["fid"], resize="bicubic")


def _fake_fid_weights(tmp_path):
    """A weights file in the FID Inception layout: random weights, BatchNorm statistics fitted on a few images."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    orig_url, orig_load = fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict
    fe.load_state_dict_from_url = lambda *a, **k: None
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None
    try:
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict = orig_url, orig_load
    for mod in net.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = None
            mod.reset_running_stats()
    with torch.no_grad():
        net.train()(torch.cat([blobs(8, 5), blobs(8, 6, shift=5.0)]).expand(-1, 3, -1, -1).contiguous())
    weights = tmp_path / "fake_inception.pth"
    torch.save(net.eval().state_dict(), weights)
    return weights, net


@pytest.mark.slow
def test_pytorch_fid_resize_is_pytorch_fids_inception_on_the_same_weights(tmp_path):
    """resize=pytorch_fid runs pytorch-fid's own InceptionV3 (bilinear resize, 2x-1 normalisation) on the local
    weights file, read as plain tensors: its features equal pytorch-fid's net fed x / 255; on 299 x 299 inputs
    (no resize) and with torch-fidelity's input normalisation ((x - 128) / 128 instead of pytorch-fid's
    (x - 127.5) / 127.5) they equal torch-fidelity's net on the same file: the weights land in the same layers."""
    import pytorch_fid.inception as pfi

    from siddm_lab.metrics.image import build_inception

    weights, tf_net = _fake_fid_weights(tmp_path)
    ours = build_inception(weights, resize="pytorch_fid", check_hash=False)
    state = torch.load(weights, weights_only=True)
    orig = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: state
    try:
        theirs = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    finally:
        pfi.load_state_dict_from_url = orig
    x = torch.cat([blobs(3, 0), blobs(3, 2, shift=5.0)]).expand(-1, 3, -1, -1)
    with torch.no_grad():
        f = ours(x)
        assert f.shape == (6, 2048)
        assert torch.allclose(f, theirs(x.float() / 255)[0].flatten(1), atol=1e-5)
        big = F.interpolate(x.float(), size=(299, 299), mode="bilinear").round().to(torch.uint8)
        ours.net.normalize_input = False
        assert torch.allclose(ours.net((big.float() - 128) / 128)[0].flatten(1), tf_net(big)[0], atol=1e-5)
        assert torch.allclose(ours.fc.weight, state["fc.weight"])
