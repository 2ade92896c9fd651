"""The paper's datasets behind one function, the paper's 224-px transforms, and the bridge that lets
an ImageFolder dataset replace Fashion-MNIST in the pipeline's data stage.

``build(name, root, split, transform, download)`` returns a torch ``Dataset`` of (image, label):

- ImageNet and CUB-200 (and any ``folder``): ImageFolder layout, ``root/train/<class>/*`` and
  ``root/val/<class>/*`` (ImageNet) or ``root/test/<class>/*`` (CUB, ``folder``).
- CIFAR-10/100, Flowers-102, Oxford-IIIT Pets, DTD (partition 1), FGVC-Aircraft (variants),
  Stanford Cars, Caltech-101 through torchvision, with the splits of the authors' configs
  (dery-method.md §8): Pets trainval/test, DTD train1+val1/test1, Aircraft trainval/test,
  Flowers train+val/test, Caltech-101 a seeded 30-per-class train split (the paper does not give it).

``download=True`` lets torchvision fetch what it can; when a dataset is missing (offline, or one
torchvision cannot download) the error names the path dery expected and what to put there.
``METRIC[name]`` is the paper's metric: mean per-class accuracy for Aircraft, Caltech-101,
Flowers and Pets, top-1 elsewhere (``dery.evaluation.mean_per_class_accuracy``).
"""
from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DatasetMissing(FileNotFoundError):
    """A dataset that is not on disk (and could not be downloaded); the message names the expected path."""


@dataclass(frozen=True)
class Spec:
    kind: str                  # "folder" or the torchvision class name
    classes: int
    metric: str                # "top1" or "mean_per_class"
    train: tuple               # torchvision split argument(s) for training, or folder names
    test: tuple
    expected: str              # what must be under root, for the error message
    small: bool = False        # 32-px source images (CIFAR): resize to 224, no crop, at test time
    downloadable: bool = True


SPECS: dict[str, Spec] = {
    "imagenet": Spec("folder", 1000, "top1", ("train",), ("val",), "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
                     downloadable=False),
    "cub200": Spec("folder", 200, "top1", ("train",), ("test",),
                   "train/<class>/*.jpg and test/<class>/*.jpg (CUB_200_2011 split by train_test_split.txt)",
                   downloadable=False),
    "folder": Spec("folder", 0, "top1", ("train",), ("test",), "train/<class>/* and test/<class>/*",
                   downloadable=False),
    "cifar10": Spec("CIFAR10", 10, "top1", (True,), (False,), "cifar-10-batches-py/", small=True),
    "cifar100": Spec("CIFAR100", 100, "top1", (True,), (False,), "cifar-100-python/", small=True),
    "flowers102": Spec("Flowers102", 102, "mean_per_class", ("train", "val"), ("test",),
                       "flowers-102/ (jpg/, imagelabels.mat, setid.mat)"),
    "pets": Spec("OxfordIIITPet", 37, "mean_per_class", ("trainval",), ("test",),
                 "oxford-iiit-pet/ (images/, annotations/)"),
    "dtd": Spec("DTD", 47, "top1", ("train", "val"), ("test",), "dtd/dtd/ (images/, labels/)"),
    "aircraft": Spec("FGVCAircraft", 100, "mean_per_class", ("trainval",), ("test",), "fgvc-aircraft-2013b/"),
    "cars": Spec("StanfordCars", 196, "top1", ("train",), ("test",),
                 "stanford_cars/ (cars_train/, cars_test/, devkit/, cars_test_annos_withlabels.mat)",
                 downloadable=False),  # torchvision's download URL is gone; place the files by hand
    "caltech101": Spec("Caltech101", 101, "mean_per_class", ("train",), ("test",),
                       "caltech101/101_ObjectCategories/"),
}
METRIC = {name: s.metric for name, s in SPECS.items()}
CALTECH_TRAIN_PER_CLASS = 30


def _missing(name: str, root: Path, why: str) -> DatasetMissing:
    spec = SPECS[name]
    how = ("set `download: true` (needs internet) or copy it there" if spec.downloadable
           else "torchvision cannot download it: copy it there by hand")
    return DatasetMissing(f"dataset `{name}` not found: expected {spec.expected} under {root} ({why}). "
                          f"Fix: {how}, or point `data.dataset.root` at the folder that holds it.")


def _folder(name: str, root: Path, splits: tuple, transform):
    from torch.utils.data import ConcatDataset
    from torchvision.datasets import ImageFolder

    parts = []
    for s in splits:
        d = root / s
        if not d.is_dir() or not any(p.is_dir() for p in d.iterdir()):
            raise _missing(name, root, f"no class folders in {d}")
        parts.append(ImageFolder(str(d), transform=transform))
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def _caltech(root: Path, train: bool, transform, download: bool, seed: int = 0):
    from torch.utils.data import Subset
    from torchvision.datasets import Caltech101

    ds = Caltech101(str(root), target_type="category", transform=None, download=download)
    ds.transform = _rgb(transform)  # a few Caltech images are grayscale
    y = np.asarray(ds.y)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        keep += (idx[:CALTECH_TRAIN_PER_CLASS] if train else idx[CALTECH_TRAIN_PER_CLASS:]).tolist()
    return Subset(ds, sorted(keep))


def _rgb(transform):
    def f(img):
        img = img.convert("RGB")
        return transform(img) if transform else img
    return f


def build(name: str, root: str | os.PathLike, split: str = "train", transform: Callable | None = None,
          download: bool = False):
    """The dataset ``name`` ("train" or "test" split) under ``root``; DatasetMissing names the expected path."""
    if name not in SPECS:
        raise ValueError(f"unknown dataset `{name}`; choose one of {', '.join(SPECS)}.")
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, not {split!r}.")
    spec, root = SPECS[name], Path(root)
    splits = spec.train if split == "train" else spec.test
    if spec.kind == "folder":
        return _folder(name, root, splits, transform)
    if download and not spec.downloadable:
        download = False
    import torchvision.datasets as tvd
    from torch.utils.data import ConcatDataset

    try:
        if name == "caltech101":
            return _caltech(root, split == "train", transform, download)
        cls = getattr(tvd, spec.kind)
        parts = []
        for s in splits:
            if name in ("cifar10", "cifar100"):
                kw = {"train": s}
            elif name == "dtd":
                kw = {"split": s, "partition": 1}
            elif name == "aircraft":
                kw = {"split": s, "annotation_level": "variant"}
            else:
                kw = {"split": s}
            parts.append(cls(str(root), transform=_rgb(transform) if name in ("pets",) else transform,
                             download=download, **kw))
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise _missing(name, root, f"torchvision: {exc}") from exc
    except OSError as exc:       # no network when download=True
        raise _missing(name, root, f"download failed: {type(exc).__name__}: {exc}") from exc
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


# ---------------------------------------------------------------- the paper's transforms and losses
def paper_transforms(train: bool, image_size: int = 224, small_source: bool = False):
    """Train: RandomResizedCrop 224 (bicubic), flip, RandAugment (2 ops, m9, std 0.5), RandomErasing 0.25.
    Test: Resize 256 (bicubic) + CenterCrop 224; 32-px sources (CIFAR): Resize 224, no crop."""
    from timm.data import create_transform

    if train:
        return create_transform(image_size, is_training=True, auto_augment="rand-m9-n2-mstd0.5-inc1",
                                interpolation="bicubic", re_prob=0.25, color_jitter=None,
                                mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if small_source:
        from torchvision import transforms as T

        return T.Compose([T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BICUBIC),
                          T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return create_transform(image_size, is_training=False, interpolation="bicubic", crop_pct=224 / 256,
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)  # 224: resize 256, centre crop 224


def paper_mixup(num_classes: int, label_smoothing: float = 0.1, mixup_alpha: float = 0.1, cutmix_alpha: float = 1.0):
    """Mixup α 0.1 / CutMix α 1.0, one of them per batch (switch 0.5), labels smoothed 0.1 (authors' configs);
    pair it with ``timm.loss.SoftTargetCrossEntropy``."""
    from timm.data import Mixup

    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=1.0, switch_prob=0.5, mode="batch",
                 label_smoothing=label_smoothing, num_classes=num_classes)


# ---------------------------------------------------------------- the pipeline's bridge
def folder_to_idx(root: str | os.PathLike, out_dir: str | os.PathLike, size: int = 28,
                  splits: tuple[str, str] = ("train", "test")) -> Path:
    """Convert an ImageFolder dataset into the four idx files the pipeline's data stage reads.

    The embedded pipeline holds its images in memory at 28x28 grayscale (padded to 32 px); a folder
    dataset enters it at that resolution (PIL resize, bilinear, luminance). Classes are the sorted
    folder names of the train split, mapped to 0..n-1 (the test split must use the same names).
    Rewritten only when the source folder is newer than the converted files.
    """
    from PIL import Image

    root, out_dir = Path(root), Path(out_dir)
    classes = None
    arrays = {}
    for split, stem in zip(splits, ("train", "t10k"), strict=False):
        d = root / split
        if not d.is_dir():
            raise DatasetMissing(f"ImageFolder dataset not found: expected {d}/<class>/<image> "
                                 f"(and {root / splits[1]}). Fix `data.dataset.root` in your params file.")
        names = sorted(p.name for p in d.iterdir() if p.is_dir())
        if classes is None:
            classes = names
        elif set(names) - set(classes):
            raise DatasetMissing(f"{d} has classes {sorted(set(names) - set(classes))} that {root / splits[0]} lacks.")
        xs, ys = [], []
        for ci, c in enumerate(classes):
            for f in sorted((d / c).iterdir()) if (d / c).is_dir() else []:
                if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff"):
                    continue
                with Image.open(f) as im:
                    xs.append(np.asarray(im.convert("L").resize((size, size), Image.BILINEAR), dtype=np.uint8))
                ys.append(ci)
        if not xs:
            raise DatasetMissing(f"no images in {d}/<class>/; fix `data.dataset.root`.")
        arrays[stem] = (np.stack(xs), np.asarray(ys, dtype=np.uint8))
    out_dir.mkdir(parents=True, exist_ok=True)
    for stem, (x, y) in arrays.items():
        _write_idx(out_dir / f"{stem}-images-idx3-ubyte.gz", x)
        _write_idx(out_dir / f"{stem}-labels-idx1-ubyte.gz", y)
    (out_dir / "classes.txt").write_text("\n".join(classes) + "\n")
    return out_dir


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = (0x0800 | arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:  # mtime=0: same images, same bytes
        f.write(header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes())
    os.replace(tmp, path)


def describe(cfg: dict[str, Any]) -> str:
    return f"{cfg['name']} from {cfg['root']}"


def pipeline_folder(cfg: dict[str, Any], out_dir: str | os.PathLike | None) -> Path:
    """The idx folder the pipeline's data stage reads for ``data.dataset`` (ImageFolder layouts only)."""
    name, root = cfg["name"], Path(cfg["root"])
    spec = SPECS.get(name)
    if spec is None or spec.kind != "folder":
        raise ValueError(f"`data.dataset.name` = {name} is not an ImageFolder dataset; the pipeline's data stage takes "
                         "folder, imagenet or cub200 (torchvision datasets are served by dery.datasets.build).")
    return folder_to_idx(root, out_dir or f"resources/{name}-idx28", splits=(spec.train[0], spec.test[0]))


def folder_problems(cfg: dict[str, Any], workdir: Path, max_classes: int = 10) -> list[str]:
    """Pre-flight for ``data.dataset`` (dery.checks): layout and class count, without reading any image."""
    name, root = cfg["name"], Path(cfg["root"])
    root = root if root.is_absolute() else workdir / root
    spec = SPECS[name]
    if spec.kind != "folder":
        return [f"`data.dataset.name` = {name}: the pipeline's data stage takes ImageFolder datasets only (folder, "
                "imagenet, cub200); torchvision datasets are for dery.datasets.build (224-px training). Use a folder "
                "dataset or drop `data.dataset`."]
    out = []
    classes = None
    for split in (spec.train[0], spec.test[0]):
        d = root / split
        names = sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
        if not names:
            out.append(f"`data.dataset`: {_missing(name, root, f'no class folders in {d}')}")
            continue
        classes = classes or names
    if classes and len(classes) > max_classes:
        out.append(f"`data.dataset`: {root} has {len(classes)} classes; the pipeline's target task has at most "
                   f"{max_classes}. Use a folder with at most {max_classes} class folders.")
    return out
