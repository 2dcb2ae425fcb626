"""Image sample-quality metrics.

* ``fd_mnist_classifier``: Fréchet distance between Gaussians fitted to the penultimate features of
  our small MNIST classifier (``siddm_lab.metrics.mnist_classifier``). It is *not* FID: values are
  only comparable with other values of this metric computed with the same classifier checkpoint.
* ``mnist_digits``: which digits the MNIST classifier sees in the samples, against the reference:
  ``digit_classes`` (digits with at least a quarter of their reference share: 10 when no digit is dropped),
  ``digit_tv`` (total variation between the two class histograms: the share of samples that would have to
  change digit; 0 for equal histograms) and ``digit_confidence`` (the classifier's mean top probability: low
  for samples that are no clear digit). What a mode-collapsed GAN loses shows here by name.
* ``fid`` / ``is`` / ``kid``: torchmetrics' ``FrechetInceptionDistance``, ``InceptionScore`` and
  ``KernelInceptionDistance`` on the standard Inception-v3 FID weights
  (``pt_inception-2015-12-05-6726825d.pth``), or on a stand-in ``feature_extractor`` (tests). The
  protocol is a setting: ``resize`` (``antialias``: torchmetrics; ``tf1``: the TF FID code;
  ``pytorch_fid``: pytorch-fid's network and resize, as DDGAN's FIDs), the reference split and size
  (``ImageDataModule``), or a reference statistics file (``reference_stats``: pytorch-fid's .npz).
* ``prc``: precision / recall / F-score (Kynkäänniemi et al. 2019, k = 3 neighbours) with
  ``torch_fidelity.metric_prc.prc_features_to_metric``, computed on the *same* features as FID/KID
  (Inception pool3, 2048-d). torch-fidelity's own default for PRC is VGG16 fc2 features, whose
  weights are not available offline, so our numbers are not comparable with torch-fidelity's PRC.

Image conventions: uint8 [N, C, H, W] in 0..255, or float in model space [-1, 1] (mapped by
``round((x + 1) * 127.5)``, clamped). Grayscale images are repeated to 3 channels before Inception
(or before the stand-in extractor, which takes Inception's place and gets the same input).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from siddm_lab.errors import ConfigError
from siddm_lab.metrics.frechet import frechet_distance, frechet_distance_from_features, gaussian_stats

METRIC_NAMES = ("fd_mnist_classifier", "mnist_digits", "fid", "is", "kid", "prc")
INCEPTION_METRICS = ("fid", "is", "kid", "prc")
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
_WEIGHTS_HINT = (f"set metrics.inception_weights=<local {INCEPTION_WEIGHTS_FILE}> "
                 f"(sha256 {INCEPTION_WEIGHTS_SHA256})")


# --------------------------------------------------------------------------- image conversions


def _as_tensor(images, what: str) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor or numpy array, got {type(images).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{what}: expected images [N, C, H, W], got shape {tuple(x.shape)}")
    if len(x) == 0:
        raise ValueError(f"{what}: no images")
    return x.detach()


def to_uint8(images, what: str = "images") -> torch.Tensor:
    """uint8 [N, C, H, W] unchanged; float images in [-1, 1] -> round((x + 1) * 127.5) clamped to 0..255."""
    x = _as_tensor(images, what)
    if x.dtype == torch.uint8:
        return x
    if not torch.is_floating_point(x):
        raise ValueError(f"{what}: expected uint8 or float images, got {x.dtype}")
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_model_space(images, what: str = "images") -> torch.Tensor:
    """uint8 -> x / 127.5 - 1; float images are taken to be in [-1, 1] already (clamped)."""
    x = _as_tensor(images, what)
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    if not torch.is_floating_point(x):
        raise ValueError(f"{what}: expected uint8 or float images, got {x.dtype}")
    return x.float().clamp(-1.0, 1.0)


def _rgb(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"{what}: expected 1 or 3 channels, got {x.shape[1]}")
    return x


# --------------------------------------------------------------------------- MNIST-classifier Fréchet distance


@torch.no_grad()
def mnist_classifier_features(images, classifier: nn.Module, batch_size: int = 500, device="cpu",
                              what: str = "images") -> torch.Tensor:
    """``classifier.features`` of images (uint8 or [-1, 1] float, [N, 1, 32|28, 32|28]) -> float [N, D] on CPU.

    28x28 images are padded to 32x32 with the background value (0 in uint8, -1 in model space).
    """
    x = to_model_space(images, what)
    if x.shape[1] != 1:
        raise ValueError(f"{what}: the MNIST classifier takes 1-channel images, got {x.shape[1]} channels")
    h, w = x.shape[-2:]
    if (h, w) == (28, 28):
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    elif (h, w) != (32, 32):
        raise ValueError(f"{what}: the MNIST classifier takes 32x32 (or 28x28) images, got {h}x{w}")
    classifier = classifier.to(device).eval()
    out = [classifier.features(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def fd_mnist_classifier(samples, reference, classifier, batch_size: int = 500, device="cpu") -> float:
    """Fréchet distance between MNIST-classifier features of ``samples`` and ``reference``.

    ``samples`` / ``reference``: uint8 [N, 1, 32, 32] (0..255), or float in model space [-1, 1];
    28x28 inputs are padded like ``ImageDataModule(pad_to=32)``. ``classifier``: an ``MNISTClassifier``
    (or anything with ``.features``), or a checkpoint path for ``load_classifier``.
    Not FID: only comparable across runs that use the same classifier checkpoint.
    """
    if isinstance(classifier, (str, Path)):
        from siddm_lab.metrics.mnist_classifier import load_classifier

        classifier = load_classifier(classifier, device=device)
    fs = mnist_classifier_features(samples, classifier, batch_size, device, what="samples")
    fr = mnist_classifier_features(reference, classifier, batch_size, device, what="reference")
    return frechet_distance_from_features(fs, fr)


def mnist_digits(samples, reference, classifier, batch_size: int = 500, device="cpu",
                 min_share: float = 0.25) -> dict[str, float]:
    """The digit classes of ``samples`` against ``reference`` by the MNIST classifier (inputs as for
    ``fd_mnist_classifier``): ``digit_classes`` (classes whose sample share is at least ``min_share`` times
    their reference share), ``digit_tv`` (total variation between the class histograms, in [0, 1]) and
    ``digit_confidence`` (mean top softmax probability over the samples)."""
    if isinstance(classifier, (str, Path)):
        from siddm_lab.metrics.mnist_classifier import load_classifier

        classifier = load_classifier(classifier, device=device)
    fs = mnist_classifier_features(samples, classifier, batch_size, device, what="samples")
    fr = mnist_classifier_features(reference, classifier, batch_size, device, what="reference")
    return mnist_digits_from_features(fs, fr, classifier, min_share)


def mnist_digits_from_features(fs: torch.Tensor, fr: torch.Tensor, classifier, min_share: float = 0.25) -> dict:
    """``mnist_digits`` from the classifier's features of the samples (``fs``) and the reference (``fr``)."""
    head = classifier.head.cpu()
    with torch.no_grad():
        ps, pr = head(fs).softmax(-1), head(fr).softmax(-1)
    k = ps.shape[1]
    hs = torch.bincount(ps.argmax(-1), minlength=k).double() / len(ps)
    hr = torch.bincount(pr.argmax(-1), minlength=k).double() / len(pr)
    return {"digit_classes": int((hs >= min_share * hr).logical_and(hr > 0).sum()),
            "digit_tv": float(0.5 * (hs - hr).abs().sum()),
            "digit_confidence": float(ps.max(-1).values.mean())}


# --------------------------------------------------------------------------- Inception metrics


class _Precomputed(nn.Module):
    """Identity 'feature extractor' so torchmetrics' metrics can be fed features extracted once."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _sha256(path: Path) -> str:
    from siddm_lab.data.idx import file_digest

    return file_digest(path, "sha256")


RESIZES = ("antialias", "tf1", "pytorch_fid")


def build_inception(weights_path=None, *, resize: str = "antialias", check_hash: bool = True) -> nn.Module:
    """The FID Inception-v3 returning pool3 features [N, 2048] from uint8 [N, 3, H, W]; its ``fc`` (2048 ->
    1008) gives the Inception Score's logits.

    ``resize`` (to 299 x 299) picks the implementation: ``antialias`` (torchmetrics' ``NoTrainInceptionV3``,
    its default antialiased bilinear resize), ``tf1`` (the same net with torch-fidelity's TF1-compatible
    bilinear resize: the original TF FID code), ``pytorch_fid`` (pytorch-fid's ``InceptionV3``: plain bilinear
    ``F.interpolate``, align_corners=False; the protocol of DDGAN's and most PyTorch papers' FIDs).
    ``weights_path``: local ``pt_inception-2015-12-05-6726825d.pth`` (checked against its sha256 unless
    ``check_hash=False``); None downloads it into the torch hub cache. Failures raise ConfigError.
    """
    if resize not in RESIZES:
        raise ConfigError(f"metrics.resize={resize!r} is unknown; allowed: {', '.join(RESIZES)}")
    path = None
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"metrics.inception_weights={path} does not exist; {_WEIGHTS_HINT}")
        if check_hash and (got := _sha256(path)) != INCEPTION_WEIGHTS_SHA256:
            raise ConfigError(f"metrics.inception_weights={path} has sha256 {got}, expected "
                              f"{INCEPTION_WEIGHTS_SHA256}: not the standard FID Inception weights")
    try:
        if resize == "pytorch_fid":
            return PytorchFidInception(path)
        from torchmetrics.image.fid import NoTrainInceptionV3

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=None if path is None else str(path),
                                      antialias=resize == "antialias")
    except Exception as e:  # noqa: BLE001 - URLError, HTTPError, hash mismatch, unpickling, state-dict errors...
        if path is None:
            raise ConfigError(f"the Inception weights could not be downloaded ({type(e).__name__}: {e}); "
                              f"{_WEIGHTS_HINT}") from e
        raise ConfigError(f"metrics.inception_weights={path} could not be loaded as Inception weights "
                          f"({type(e).__name__}: {e}); {_WEIGHTS_HINT}") from e


class PytorchFidInception(nn.Module):
    """pytorch-fid's ``InceptionV3`` (pool3, resize_input, normalize_input, the FID Inception blocks) on
    uint8 images, with the FID weights read from a local file as plain tensors (``weights_only``), or
    pytorch-fid's download when ``path`` is None. ``fc``: the weights' 1008-way logits layer (for IS)."""

    def __init__(self, path: Path | None = None):
        super().__init__()
        import pytorch_fid.inception as pfi

        if path is None:
            state = pfi.load_state_dict_from_url(pfi.FID_WEIGHTS_URL, progress=False)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        original = pfi.load_state_dict_from_url
        pfi.load_state_dict_from_url = lambda *a, **k: state  # pytorch-fid would download; hand it the file
        try:
            self.net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                                       normalize_input=True, use_fid_inception=True).eval()
        finally:
            pfi.load_state_dict_from_url = original
        self.fc = nn.Linear(2048, 1008)
        self.fc.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
        self.requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # batch norms stay in inference mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255.0)[0].flatten(1)


@torch.no_grad()
def _extract(images, extractor, batch_size: int, device, what: str, with_logits: bool, fc=None):
    """Features (and IS logits) of images, batch by batch, as float CPU tensors."""
    x = _rgb(to_uint8(images, what), what)
    feats, logits = [], []
    for i in range(0, len(x), batch_size):
        f = extractor(x[i:i + batch_size].to(device))
        if f.dim() != 2:
            raise ValueError(f"the feature extractor returned shape {tuple(f.shape)}, expected [N, D]")
        if with_logits and fc is not None:
            # torch-fidelity's 'logits_unbiased' (the IS default in torchmetrics): pool3 @ fc.weight^T, no bias.
            logits.append((f @ fc.weight.T).float().cpu())
        feats.append(f.float().cpu())
    feats = torch.cat(feats)
    if not with_logits:
        return feats, None
    return feats, (torch.cat(logits) if fc is not None else feats)


def _check_names(names, allowed: Sequence[str], key: str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(names))
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ConfigError(f"{key}: unknown metric name(s) {bad or names}; allowed: {', '.join(allowed)}")
    return names


def inception_metrics(samples, reference=None, *, metrics: Iterable[str] = ("fid", "is", "kid"),
                      weights_path=None, feature_extractor: nn.Module | None = None, batch_size: int = 100,
                      device="cpu", kid_subset_size: int | None = None, kid_subsets: int = 100,
                      is_splits: int = 10, prc_neighborhood: int = 3, seed: int = 0,
                      resize: str = "antialias", reference_stats=None) -> dict:
    """FID / IS / KID (torchmetrics) and precision/recall (torch-fidelity) of uint8 or [-1, 1] images.

    Returns the requested keys among ``fid``, ``is_mean``, ``is_std``, ``kid_mean``, ``kid_std``,
    ``precision``, ``recall``, ``f_score``. Images are passed through the network once; the features
    feed torchmetrics' metrics.

    Args:
        samples, reference: [N, C, H, W], uint8 0..255 or float in [-1, 1]; C = 1 is repeated to 3.
            ``reference`` may be None when only ``is`` is requested.
        metrics: subset of ``("fid", "is", "kid", "prc")``.
        weights_path: local Inception weights file (``metrics.inception_weights``); passed to
            torchmetrics' ``NoTrainInceptionV3(feature_extractor_weights_path=...)``. Missing -> ConfigError.
            None: torch-fidelity's download (cached by torch hub); offline -> ConfigError.
        feature_extractor: stand-in for Inception: an ``nn.Module`` mapping uint8 [N, 3, H, W] to [N, D];
            its output is also used as the IS logits.
        kid_subset_size: KID subset size; None -> min(1000, len(samples), len(reference)).
        is_splits: IS splits (torchmetrics default 10); with 1 split ``is_std`` is 0.
        seed: seeds the random splits/subsets of IS and KID (global RNG state is restored afterwards).
        resize: the Inception's resize to 299 (``build_inception``: antialias, tf1, pytorch_fid). Ignored with
            ``feature_extractor``.
        reference_stats: FID against these reference statistics instead of reference images: an ``.npz``
            with ``mu`` [2048] and ``sigma`` [2048, 2048] (pytorch-fid's ``--save-stats`` format) or a
            ``(mu, sigma)`` pair. They must come from the same network and resize.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    names = _check_names(metrics, INCEPTION_METRICS, "metrics")
    ref_stats = load_reference_stats(reference_stats) if reference_stats is not None else None
    paired = [n for n in names if n != "is" and not (n == "fid" and ref_stats is not None)]
    if paired and reference is None:
        raise ValueError(f"{', '.join(paired)} need reference images")
    if feature_extractor is not None:
        extractor, fc = feature_extractor.to(device).eval(), None
    else:
        extractor = build_inception(weights_path, resize=resize).to(device)
        fc = extractor.fc
    want_is = "is" in names
    fs, logits = _extract(samples, extractor, batch_size, device, "samples", want_is, fc)
    fr = _extract(reference, extractor, batch_size, device, "reference", False)[0] if paired else None

    out: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        warnings.filterwarnings("ignore", message=".*degrees of freedom is <= 0.*")  # IS std of 1 split
        torch.manual_seed(seed)
        if "fid" in names and ref_stats is not None:
            if ref_stats[0].shape != (fs.shape[1],):
                raise ConfigError(f"metrics.reference_stats hold {ref_stats[0].shape[0]}-d statistics, the "
                                  f"features are {fs.shape[1]}-d")
            out["fid"] = frechet_distance(*gaussian_stats(fs), *ref_stats)
        elif "fid" in names:
            fid = FrechetInceptionDistance(feature=_Precomputed(fs.shape[1]))
            fid.update(fr, real=True)
            fid.update(fs, real=False)
            out["fid"] = float(fid.compute())
        if want_is:
            if not 1 <= is_splits <= len(logits):
                raise ConfigError(f"is_splits={is_splits} must be between 1 and the number of samples {len(logits)}")
            isc = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=is_splits)
            isc.update(logits)
            mean, std = isc.compute()
            out["is_mean"], out["is_std"] = float(mean), (float(std) if is_splits > 1 else 0.0)
        if "kid" in names:
            n = min(len(fs), len(fr))
            size = min(1000, n) if kid_subset_size is None else kid_subset_size
            if not 2 <= size <= n:
                raise ConfigError(f"kid_subset_size={size} must be between 2 and the smaller set size {n}")
            kid = KernelInceptionDistance(feature=_Precomputed(fs.shape[1]), subsets=kid_subsets, subset_size=size)
            kid.update(fr, real=True)
            kid.update(fs, real=False)
            mean, std = kid.compute()
            out["kid_mean"], out["kid_std"] = float(mean), float(std)
    if "prc" in names:
        from torch_fidelity.metric_prc import prc_features_to_metric

        # torch-fidelity's convention: features_1 = generated, features_2 = real.
        prc = prc_features_to_metric(fs, fr, prc_neighborhood=prc_neighborhood, prc_batch_size=10000,
                                     save_cpu_ram=False, verbose=False)
        out.update(precision=float(prc["precision"]), recall=float(prc["recall"]), f_score=float(prc["f_score"]))
    return out


def load_reference_stats(stats) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an ``.npz`` file (keys ``mu``, ``sigma``) or a pair; bad files raise ConfigError."""
    if isinstance(stats, (str, Path)):
        path = Path(stats).expanduser()
        if not path.is_file():
            raise ConfigError(f"metrics.reference_stats={path} does not exist; make it with "
                              f"`python -m pytorch_fid --save-stats <reference image folder> {path.name}`")
        try:
            with np.load(path, allow_pickle=False) as f:
                stats = (f["mu"], f["sigma"])
        except Exception as e:  # noqa: BLE001 - not a zip, missing key, pickled arrays...
            raise ConfigError(f"metrics.reference_stats={path} is not an .npz with arrays 'mu' and 'sigma' "
                              f"({type(e).__name__}: {e})") from e
    mu, sigma = (np.asarray(a, np.float64) for a in stats)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ConfigError(f"metrics.reference_stats: expected finite mu [D] and sigma [D, D], got shapes "
                          f"{mu.shape} and {sigma.shape}")
    return mu, sigma


# --------------------------------------------------------------------------- single entry point


def compute_image_metrics(samples, reference, names, *, classifier_path=None, inception_weights=None,
                          feature_extractor: nn.Module | None = None, device="cpu", batch_size: int = 100,
                          kid_subset_size: int | None = None, seed: int = 0, resize: str = "antialias",
                          reference_stats=None) -> dict:
    """Compute the named metrics (subset of ``METRIC_NAMES``) of ``samples`` against ``reference``.

    ``fd_mnist_classifier`` loads ``classifier_path`` (``default_classifier_path()`` if None) and returns
    key ``fd_mnist_classifier``; ``mnist_digits`` (the same classifier) ``digit_classes``, ``digit_tv`` and
    ``digit_confidence``; ``fid``/``is``/``kid``/``prc`` go to ``inception_metrics`` (keys ``fid``,
    ``is_mean``/``is_std``, ``kid_mean``/``kid_std``, ``precision``/``recall``/``f_score``) with
    ``inception_weights`` as its ``weights_path``. Unknown names raise ConfigError.
    """
    names = _check_names(names, METRIC_NAMES, "metrics.names")
    out: dict[str, float] = {}
    if "fd_mnist_classifier" in names or "mnist_digits" in names:
        from siddm_lab.metrics.mnist_classifier import load_classifier

        clf = load_classifier(classifier_path, device=device)
        # one pass of the classifier over the samples and the reference serves both metrics
        fs = mnist_classifier_features(samples, clf, device=device, what="samples")
        fr = mnist_classifier_features(reference, clf, device=device, what="reference")
        if "fd_mnist_classifier" in names:
            out["fd_mnist_classifier"] = frechet_distance_from_features(fs, fr)
        if "mnist_digits" in names:
            out.update(mnist_digits_from_features(fs, fr, clf))
    inception = [n for n in names if n in INCEPTION_METRICS]
    if inception:
        out.update(inception_metrics(samples, reference, metrics=inception, weights_path=inception_weights,
                                     feature_extractor=feature_extractor, batch_size=batch_size, device=device,
                                     kid_subset_size=kid_subset_size, seed=seed, resize=resize,
                                     reference_stats=reference_stats))
    return out
