"""Image dataset readers: MNIST (IDX), CIFAR-10 (python pickles), sklearn digits, image folders.

Every reader returns ``(images, labels)``: uint8 array [N, C, H, W] and int64 array [N]
(labels are -1 where a source has none). Layouts follow torchvision, so a ``root`` prepared
for torchvision works here:

* MNIST: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
* CIFAR-10: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}``
* image folders: ``<root>/{train,test}/...``, or one folder of training images (``read_image_folder``)
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from siddm_lab.data.idx import check_file, read_idx
from siddm_lab.errors import ConfigError, DataError

SPLITS = ("train", "test")

# md5 and size of the official uncompressed MNIST files.
MNIST_FILES = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", 47_040_016),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", 60_008),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", 7_840_016),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", 10_008),
}

# md5 of the official CIFAR-10 python batches (as listed by torchvision.datasets.CIFAR10).
CIFAR10_FILES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split={split!r} is unknown; allowed: {', '.join(SPLITS)}")


def _root(root) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data directory {root.resolve()} does not exist (set paths.data_dir=...)")
    return root


def read_mnist(root, split: str = "train", verify: str = "md5"):
    """MNIST from ``<root>/MNIST/raw`` (uncompressed or .gz IDX files)."""
    _check_split(split)
    raw = _root(root) / "MNIST" / "raw"
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{prefix}-{kind}-ubyte"
        path = raw / name
        md5, size = MNIST_FILES[name]
        if not path.is_file() and (raw / (name + ".gz")).is_file():
            path = raw / (name + ".gz")
            check_file(path, md5=None, size=None, verify="none", what="MNIST")
        else:
            check_file(path, md5=md5, size=size, verify=verify, what="MNIST")
        arrays.append(read_idx(path))
    images, labels = arrays
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"MNIST in {raw}: images {images.shape} and labels {labels.shape} do not match")
    return images[:, None].astype(np.uint8), labels.astype(np.int64)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR-10 batches hold (dicts, lists, bytes, numpy arrays)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "bytes"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles
        ("numpy.core.numeric", "_frombuffer"),  # arrays in protocol-5 pickles
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar10(root, split: str = "train", verify: str = "md5"):
    """CIFAR-10 from ``<root>/cifar-10-batches-py`` (the official python version)."""
    _check_split(split)
    base = _root(root) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = base / name
        check_file(path, md5=CIFAR10_FILES[name], size=None, verify=verify, what="CIFAR-10")
        try:
            with open(path, "rb") as f:
                batch = _SafeUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
            data = np.asarray(batch["data"], dtype=np.uint8)
            labels = np.asarray(batch["labels"], dtype=np.int64)
        except Exception as e:  # noqa: BLE001 - any parse failure means a corrupt file
            raise DataError(f"CIFAR-10: {path} is not a valid CIFAR-10 python batch ({e})") from e
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise DataError(f"CIFAR-10: {path} holds data {data.shape}, expected [N, 3072] with N labels")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def read_digits(root=None, split: str = "train", verify: str = "none", test_fraction: float = 0.2):
    """scikit-learn's 8×8 digits (1,797 images shipped with sklearn), values 0..16 -> 0..255."""
    from sklearn.datasets import load_digits

    _check_split(split)
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    n_test = int(round(len(images) * test_fraction))
    perm = np.random.default_rng(0).permutation(len(images))
    idx = perm[n_test:] if split == "train" else perm[:n_test]
    return images[idx], labels[idx]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image_folder(root, split: str = "train", verify: str = "none", image_size: int = 64,
                      channels: int = 3, test_fraction: float | None = None, test_from_train: bool = False):
    """Images of one split of a folder: ``<root>/<split>/`` when ``<root>/test/`` exists.

    A folder without ``test/`` (flat, or ``train/`` alone) is the training split only; evaluation and the
    validation loss read the test split, and reading it from the training images would make them look
    better than the model is. So its test split is either ``test_fraction`` of it, held out (the same
    images every run, left out of training), or, with ``test_from_train``, the training images
    themselves (as FID on CelebA-HQ is often reported against the training set); without either option
    the test split is a DataError.

    Sub-folder names become class labels (ImageFolder convention); images are resized on the
    short side and centre-cropped to ``image_size``.
    """
    from PIL import Image, UnidentifiedImageError

    _check_split(split)
    base = _root(root)
    if test_fraction is not None and (isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float))
                                      or not 0 < test_fraction < 1):
        raise ConfigError(f"dataset.reader.test_fraction={test_fraction!r} is invalid: expected a number in (0, 1) "
                          f"or null")
    if test_fraction is not None and test_from_train:
        raise ConfigError("dataset.reader.test_fraction and dataset.reader.test_from_train: set one, not both")
    holds_out = test_fraction is not None or test_from_train
    if (base / "test").is_dir():
        if holds_out:
            raise ConfigError(f"image folder {base} has its own test/ split: dataset.reader.test_fraction and "
                              f"dataset.reader.test_from_train apply to a folder without one; leave them unset")
        pool = base / split
        if not pool.is_dir():
            raise DataError(f"image folder {base} has a test/ sub-folder but no {split}/ sub-folder; expected "
                            f"<root>/train/... and <root>/test/...")
    else:
        pool = base / "train" if (base / "train").is_dir() else base
        if split == "test" and not holds_out:
            raise DataError(
                f"image folder {base} has no test split (no test/ sub-folder): expected <root>/train/... and "
                f"<root>/test/...; without test/ the folder is the training split only. Set "
                f"++dataset.reader.test_fraction=0.05 to hold out a fixed 5 % of its images as the test split, or "
                f"++dataset.reader.test_from_train=true to evaluate against the training images")
    files = _image_files(pool)
    if not files:
        raise DataError(f"image folder {pool} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    classes = sorted({p.parent.relative_to(pool).as_posix() for p in files})
    class_idx = {c: i for i, c in enumerate(classes)}
    if test_fraction is not None:
        n_test = int(round(len(files) * test_fraction))
        if not 0 < n_test < len(files):
            raise DataError(f"dataset.reader.test_fraction={test_fraction} of the {len(files)} images in {pool} "
                            + ("holds out no image" if n_test == 0 else "leaves no training image"))
        held_out = set(np.random.default_rng(0).permutation(len(files))[:n_test].tolist())
        files = [p for i, p in enumerate(files) if (i in held_out) == (split == "test")]
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise DataError(f"image folder: dataset.channels={channels} is not supported; allowed: 1, 3")
    out = np.empty((len(files), channels, image_size, image_size), dtype=np.uint8)
    labels = np.empty(len(files), dtype=np.int64)
    for i, p in enumerate(files):
        try:
            with Image.open(p) as im:
                im = im.convert(mode)
                w, h = im.size
                s = image_size / min(w, h)
                im = im.resize((max(image_size, round(w * s)), max(image_size, round(h * s))), Image.BICUBIC)
                w, h = im.size
                left, top = (w - image_size) // 2, (h - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"image folder: cannot read {p} ({e})") from e
        out[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
        labels[i] = class_idx[p.parent.relative_to(pool).as_posix()]
    return out, labels

