"""A small MNIST classifier whose penultimate features define ``fd_mnist_classifier``.

Inputs are 32x32 single-channel images in model space [-1, 1]: MNIST zero-padded 28 -> 32
(2 px each side, in uint8, exactly as ``ImageDataModule(pad_to=32)``) and mapped by ``x/127.5 - 1``.

The trained classifier ships with the package (``SHIPPED_CLASSIFIER_PATH``,
``siddm_lab/metrics/weights/mnist_classifier.pt``, 99.16 % test accuracy; its sha256, accuracy and training
command are in ``mnist_classifier.json`` beside it) and is the one behind every ``fd_mnist_classifier``
number in ``experiments/``. Which checkpoint a metric uses:

1. an explicit path (``dataset.metrics.classifier_path``, ``load_classifier(path)``), loaded as given;
2. otherwise the shipped file, whose sha256 is checked on every load (a corrupt or modified file is refused).

A classifier in the user's cache (``$SIDDM_CACHE_DIR`` or ``~/.cache/siddm_lab``) is never picked up
implicitly: one trained on another machine or torch build need not be bit-identical to the shipped one,
and a silent override would make ``fd_mnist_classifier`` numbers incomparable across users. To train
your own (CPU, about a minute on 2 cores) and use it, name the output and then the path::

    python -m siddm_lab.metrics.mnist_classifier --data-dir ../shared/data --out my_classifier.pt
    siddm-train ... dataset.metrics.classifier_path=my_classifier.pt

which prints the test accuracy and whether the weights equal the shipped ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from siddm_lab.errors import CheckpointError, ConfigError, SiddmError

IMAGE_SIZE = 32
FEATURE_DIM = 128
TRAIN_COMMAND = "python -m siddm_lab.metrics.mnist_classifier --data-dir <dir holding MNIST/raw> --out {path}"
SHIPPED_CLASSIFIER_PATH = Path(__file__).resolve().parent / "weights" / "mnist_classifier.pt"
SHIPPED_CLASSIFIER_SHA256 = "67bf43d770cede9d38f7850d5319e8a343dab65484c350cfe8a75f3016a3c959"


def default_classifier_path() -> Path:
    """The checkpoint used when no path is given (``dataset.metrics.classifier_path: null``): the shipped
    ``SHIPPED_CLASSIFIER_PATH``. A user's own classifier is used only when its path is given explicitly."""
    return SHIPPED_CLASSIFIER_PATH


def shipped_classifier_record() -> dict:
    """The record beside the shipped weights (``weights/mnist_classifier.json``): sha256, test accuracy,
    training command and configuration."""
    return json.loads(SHIPPED_CLASSIFIER_PATH.with_suffix(".json").read_text())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_shipped(path: Path) -> bool:
    try:
        return path.resolve() == SHIPPED_CLASSIFIER_PATH.resolve()
    except OSError:
        return False


class MNISTClassifier(nn.Module):
    """A strided 5x5 conv (32 -> 16 px) and two 3x3 conv blocks with max-pooling (-> 8 -> 4 px), each
    conv followed by BatchNorm and ReLU (16, 32, 64 channels for ``width=16``), then a 128-unit hidden layer.

    ``forward(x) -> logits [N, 10]``; ``features(x) -> [N, 128]`` (penultimate layer, after ReLU).
    ``x``: float [N, 1, 32, 32] in [-1, 1]. Call ``.eval()`` before extracting features (BatchNorm).
    """

    def __init__(self, width: int = 16, feature_dim: int = FEATURE_DIM, num_classes: int = 10):
        super().__init__()
        w = width
        self.width, self.feature_dim, self.num_classes = width, feature_dim, num_classes
        self.conv = nn.Sequential(
            nn.Conv2d(1, w, 5, stride=2, padding=2), nn.BatchNorm2d(w), nn.ReLU(),  # 16x16
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
        )
        self.fc = nn.Linear(4 * w * (IMAGE_SIZE // 8) ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"MNISTClassifier expects [N, 1, {IMAGE_SIZE}, {IMAGE_SIZE}] images in [-1, 1], "
                             f"got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise ValueError(f"MNISTClassifier expects float images in [-1, 1], got {x.dtype} "
                             f"(convert uint8 with siddm_lab.metrics.mnist_classifier.to_model_space)")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def pad_uint8(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Zero-pad uint8 [N, C, H, W] to ``size`` (as ``ImageDataModule(pad_to=size)``)."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"images are {h}x{w}, larger than {size}x{size}")
    ph, pw = size - h, size - w
    return F.pad(images, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0)


def to_model_space(images) -> torch.Tensor:
    """uint8 [N, 1, H, W] (H, W <= 32; padded with 0) -> float [N, 1, 32, 32] in [-1, 1]."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise ValueError(f"to_model_space expects uint8 images, got {x.dtype}")
    return pad_uint8(x).float() / 127.5 - 1.0


def _load_split(data_dir, split: str, verify: str, limit: int | None = None):
    """MNIST ``split`` (first ``limit`` images) as model-space [N, 1, 32, 32] floats and int64 labels."""
    from siddm_lab.data.images import read_mnist

    images, labels = read_mnist(data_dir, split, verify=verify)
    images, labels = images[:limit], labels[:limit]
    return to_model_space(torch.from_numpy(np.ascontiguousarray(images))), torch.from_numpy(labels)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
                      device="cpu") -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size].to(device))
        correct += (logits.argmax(1).cpu() == y[i:i + batch_size]).sum().item()
    return correct / len(x)


def train_classifier(data_dir, out_path, *, epochs: int = 2, seed: int = 0, batch_size: int = 256,
                     lr: float = 3e-3, subset: int | None = None, test_subset: int | None = None,
                     device="cpu", verify: str = "md5", verbose: bool = False) -> dict:
    """Train ``MNISTClassifier`` on MNIST train (first ``subset`` images if given) and save it.

    Reproducible: weights are initialised from ``seed`` and the batch order comes from a separate
    generator seeded with ``seed`` (bit-identical on CPU for a given torch build and thread count).
    Adam with a cosine learning-rate decay to zero over all steps.

    The checkpoint ``{"state_dict", "test_accuracy", "config"}`` is written to ``out_path`` (required; the
    shipped classifier is never overwritten). Returns ``{"test_accuracy", "path", "train_seconds"}``.
    """
    if out_path is None:
        raise ConfigError(f"give the path to write the classifier to (the shipped one, {SHIPPED_CLASSIFIER_PATH}, "
                          f"is the default of every metric and is never overwritten)")
    out_path = Path(out_path).expanduser()
    if _is_shipped(out_path):
        raise ConfigError(f"{out_path} is the shipped MNIST classifier, which is never overwritten (it defines "
                          f"the fd_mnist_classifier numbers in experiments/); write your own elsewhere and "
                          f"use it with dataset.metrics.classifier_path=<file>")
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")
    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise ConfigError(f"subset must be a positive integer or None, got {subset!r}")
    device = torch.device(device)
    t0 = time.perf_counter()
    x_train, y_train = _load_split(data_dir, "train", verify, subset)
    x_test, y_test = _load_split(data_dir, "test", verify, test_subset)

    torch.manual_seed(seed)
    model = MNISTClassifier().to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(x_train) // batch_size)
    total_steps = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(x_train), batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = x_train[idx].to(device), y_train[idx].to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n += len(idx)
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: train loss {total / n:.4f} ({time.perf_counter() - t0:.1f} s)")
    acc = evaluate_accuracy(model, x_test, y_test, device=device)
    train_seconds = time.perf_counter() - t0
    config = {"epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr, "subset": subset,
              "test_subset": test_subset, "n_train": len(x_train), "n_test": len(x_test)}
    save_classifier(model, out_path, test_accuracy=acc, config=config)
    return {"test_accuracy": float(acc), "path": str(out_path), "train_seconds": train_seconds}


def save_classifier(model: MNISTClassifier, path, *, test_accuracy: float | None = None,
                    config: dict | None = None) -> Path:
    """Write ``{"state_dict", "test_accuracy", "config"}`` (plain types and tensors only) to ``path``."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {**(config or {}), "width": model.width, "feature_dim": model.feature_dim,
              "num_classes": model.num_classes, "image_size": IMAGE_SIZE}
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    acc = None if test_accuracy is None else float(test_accuracy)
    torch.save({"state_dict": state, "test_accuracy": acc, "config": config}, path)
    return path


def load_classifier(path=None, device="cpu") -> MNISTClassifier:
    """Load a checkpoint written by ``train_classifier``, in eval mode: ``path`` if given (as is), else the
    shipped classifier, whose sha256 must be ``SHIPPED_CLASSIFIER_SHA256``.

    Raises CheckpointError if the file is missing, is not such a checkpoint, or is a corrupt or modified
    copy of the shipped one. The model's ``path``, ``sha256`` and ``test_accuracy`` are set as attributes.
    """
    path = Path(path).expanduser() if path is not None else SHIPPED_CLASSIFIER_PATH
    shipped = _is_shipped(path)
    if shipped:
        how = ("restore it (git checkout -- siddm_lab/metrics/weights/mnist_classifier.pt in a checkout, or "
               "reinstall siddm_lab), or give a classifier of your own with dataset.metrics.classifier_path=<file>")
        if not path.is_file():
            raise CheckpointError(f"the shipped MNIST classifier {path} is missing (an installation without the "
                                  f"package data?); {how}")
        digest = _sha256(path)
        if digest != SHIPPED_CLASSIFIER_SHA256:
            raise CheckpointError(f"the shipped MNIST classifier {path} has sha256 {digest}, expected "
                                  f"{SHIPPED_CLASSIFIER_SHA256}: the file is corrupt or was modified, and its "
                                  f"fd_mnist_classifier numbers would not be comparable; {how}")
    else:
        how = (f"create it with: {TRAIN_COMMAND.format(path=path)}, or leave dataset.metrics.classifier_path "
               f"null for the shipped classifier")
        if not path.is_file():
            raise CheckpointError(f"MNIST classifier checkpoint {path} does not exist; {how}")
        digest = _sha256(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        from siddm_lab.models.loading import _unreadable

        # the reason without torch's advice to load the file unsafely
        raise CheckpointError(f"{_unreadable(path, e)} (the MNIST classifier); {how}") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not an MNIST classifier checkpoint (no 'state_dict' entry); {how}")
    cfg = ckpt.get("config") or {}
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} is not an MNIST classifier checkpoint ('config' is not a dict); {how}")
    try:
        model = MNISTClassifier(width=int(cfg.get("width", 16)), feature_dim=int(cfg.get("feature_dim", FEATURE_DIM)),
                                num_classes=int(cfg.get("num_classes", 10)))
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} does not match MNISTClassifier ({e}); {how}") from e
    model.test_accuracy = ckpt.get("test_accuracy")
    model.path, model.sha256 = str(path), digest
    return model.to(device).eval().requires_grad_(False)


def _equals_shipped(path) -> bool | None:
    """Whether the checkpoint at ``path`` holds exactly the shipped classifier's tensors (None: unknown)."""
    try:
        mine = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        ref = load_classifier().state_dict()
    except (SiddmError, OSError, KeyError, RuntimeError):
        return None
    return set(mine) == set(ref) and all(torch.equal(mine[k], ref[k]) for k in ref)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m siddm_lab.metrics.mnist_classifier",
        description="Train an MNIST classifier for fd_mnist_classifier. The metrics use the shipped classifier "
                    f"({SHIPPED_CLASSIFIER_PATH}) unless dataset.metrics.classifier_path names another.")
    p.add_argument("--data-dir", required=True, help="directory holding MNIST/raw (torchvision layout)")
    p.add_argument("--out", required=True,
                   help="checkpoint path to write; use it with dataset.metrics.classifier_path=<out>")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        res = train_classifier(args.data_dir, args.out, epochs=args.epochs, seed=args.seed,
                               batch_size=args.batch_size, device=args.device, verbose=True)
    except SiddmError as e:  # bad data dir / arguments: one line, exit status 2, no traceback
        raise SystemExit(f"error: {e}") from None
    print(f"test accuracy {res['test_accuracy']:.4f}; saved {res['path']} ({res['train_seconds']:.1f} s)")
    same = _equals_shipped(res["path"])
    if same is not None:
        print("the weights are bit-identical to the shipped classifier" if same else
              "the weights differ from the shipped classifier: fd_mnist_classifier with "
              "dataset.metrics.classifier_path=" + res["path"] + " is not comparable with experiments/")


if __name__ == "__main__":
    main()
