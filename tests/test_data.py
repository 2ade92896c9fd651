"""Fashion-MNIST reading, preprocessing and the shared splits."""
import gzip

import numpy as np
import pytest
import torch

from dery import data as D


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for stem, shape in [("train-images-idx3-ubyte", (50, 28, 28)), ("t10k-images-idx3-ubyte", (20, 28, 28))]:
        write_idx(tmp_path / f"{stem}.gz", rng.integers(0, 256, size=shape))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(50) % 10)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(20) % 10)
    return tmp_path


def test_reads_idx_files_from_a_given_folder(tiny_dataset):
    ds = D.load_fashion_mnist(D.find_fashion_mnist(tiny_dataset))
    assert ds.train_x.shape == (50, 28, 28) and ds.test_y.tolist() == [i % 10 for i in range(20)]


def test_missing_data_names_the_places_looked_and_the_fix(tmp_path):
    with pytest.raises(D.DataError, match="apt-get install dataset-fashion-mnist"):
        D.find_fashion_mnist(tmp_path)


def test_truncated_file_is_detected(tmp_path):
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(D.DataError, match="truncated"):
        D._read_idx(tmp_path / "x.gz")


def test_images_are_padded_to_32px_three_channels_normalised():
    x = np.zeros((2, 28, 28), dtype=np.uint8)
    t = D.to_images(x)
    assert t.shape == (2, 3, 32, 32) and torch.allclose(t, torch.full_like(t, -D.MEAN / D.STD))


def test_augmentation_is_seeded_and_keeps_shapes():
    x = torch.randn(5, 3, 32, 32)
    a = D.augment(x, torch.Generator().manual_seed(1))
    b = D.augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
