"""A small MNIST classifier whose penultimate features define ``fd_mnist_classifier``.

Inputs are 32x32 single-channel images in model space [-1, 1]: MNIST zero-padded 28 -> 32
(2 px each side, in uint8, exactly as ``ImageDataModule(pad_to=32)``) and mapped by ``x/127.5 - 1``.

Train and cache it once (CPU, about a minute on 2 cores)::

    python -m siddm_lab.metrics.mnist_classifier --data-dir ../shared/data

which writes ``default_classifier_path()`` (``$SIDDM_CACHE_DIR/mnist_classifier.pt`` or
``~/.cache/siddm_lab/mnist_classifier.pt``) and prints the test accuracy.
"""

from __future__ import annotations

import argparse
import math
import os
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


def default_classifier_path() -> Path:
    """``$SIDDM_CACHE_DIR/mnist_classifier.pt``, else ``~/.cache/siddm_lab/mnist_classifier.pt``."""
    cache = os.environ.get("SIDDM_CACHE_DIR")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache" / "siddm_lab"
    return base / "mnist_classifier.pt"


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


def train_classifier(data_dir, out_path=None, *, epochs: int = 2, seed: int = 0, batch_size: int = 256,
                     lr: float = 3e-3, subset: int | None = None, test_subset: int | None = None,
                     device="cpu", verify: str = "md5", verbose: bool = False) -> dict:
    """Train ``MNISTClassifier`` on MNIST train (first ``subset`` images if given) and save it.

    Reproducible: weights are initialised from ``seed`` and the batch order comes from a separate
    generator seeded with ``seed`` (bit-identical on CPU for a given torch build and thread count).
    Adam with a cosine learning-rate decay to zero over all steps.

    The checkpoint ``{"state_dict", "test_accuracy", "config"}`` is written to ``out_path``
    (``default_classifier_path()`` if None). Returns ``{"test_accuracy", "path", "train_seconds"}``.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be an integer >= 1, got {epochs!r}")
    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise ConfigError(f"subset must be a positive integer or None, got {subset!r}")
    out_path = Path(out_path).expanduser() if out_path is not None else default_classifier_path()
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
    """Load a checkpoint written by ``train_classifier`` (``default_classifier_path()`` if None), in eval mode.

    Raises CheckpointError if the file is missing or is not such a checkpoint.
    """
    path = Path(path).expanduser() if path is not None else default_classifier_path()
    how = f"create it with: {TRAIN_COMMAND.format(path=path)}"
    if not path.is_file():
        raise CheckpointError(f"MNIST classifier checkpoint {path} does not exist; {how}")
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
    return model.to(device).eval().requires_grad_(False)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m siddm_lab.metrics.mnist_classifier",
                                description="Train the MNIST classifier used by fd_mnist_classifier and cache it.")
    p.add_argument("--data-dir", required=True, help="directory holding MNIST/raw (torchvision layout)")
    p.add_argument("--out", default=None, help=f"checkpoint path (default: {default_classifier_path()})")
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


if __name__ == "__main__":
    main()
