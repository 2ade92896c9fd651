"""Files handed between stages are verified: a corrupted checkpoint, feature file or CKA matrix
stops the reading stage with a clear error instead of being used."""
import numpy as np
import pytest
import timm

from dery import integrity, zoo
from dery.stages._io import _feats, _save_npz
from dery.stages.partition import _load_pairs


def flip_a_byte(path, offset=-20):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_sealed_file_verifies_until_one_byte_changes(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"0123456789" * 10)
    integrity.seal(f)
    integrity.verify(f)
    flip_a_byte(f)
    with pytest.raises(integrity.IntegrityError, match=r"changed or corrupted.*`snakemake --cores all --forcerun "):
        integrity.verify(f)


def test_the_advised_rebuild_command_names_the_file_and_the_runs_params_file(tmp_path, monkeypatch):
    f = tmp_path / "x.npz"
    monkeypatch.delenv(integrity.PARAMS_FILE_ENV, raising=False)
    assert integrity.rebuild_command(f) == f"snakemake --cores all --forcerun {f}"
    monkeypatch.setenv(integrity.PARAMS_FILE_ENV, "params/smoke.yaml")
    with pytest.raises(integrity.IntegrityError, match=f"`snakemake --cores all --forcerun {f} --configfile "
                                                       "params/smoke.yaml`"):
        integrity.verify(f)


def test_a_file_without_checksum_is_not_trusted(tmp_path):
    f = tmp_path / "x.npz"
    np.savez(f, a=np.zeros(3))
    with pytest.raises(integrity.IntegrityError, match="no checksum"):
        integrity.verify(f)


def test_corrupted_checkpoint_is_refused(tmp_path):
    model = timm.create_model("resnet10t", num_classes=3)
    path = tmp_path / "m.safetensors"
    zoo.save(model, path, {"id": "m", "arch": "resnet10t", "num_classes": 3, "kwargs": {}})
    zoo.load(path)
    flip_a_byte(path)
    with pytest.raises(integrity.IntegrityError, match="m.safetensors"):
        zoo.load(path)


def test_corrupted_features_and_similarity_files_are_refused(tmp_path):
    feats = tmp_path / "a.npz"
    _save_npz(feats, f0000=np.ones((4, 2)), f0001=np.zeros((4, 3)))
    assert [f.shape for f in _feats(str(feats))] == [(4, 2), (4, 3)]
    sim = tmp_path / "a.vs.a.npz"
    _save_npz(sim, cka=np.eye(2))
    assert _load_pairs([str(sim)])[("a", "a")].shape == (2, 2)
    for f in (feats, sim):
        flip_a_byte(f, offset=len(f.read_bytes()) // 2)
    with pytest.raises(integrity.IntegrityError):
        _feats(str(feats))
    with pytest.raises(integrity.IntegrityError):
        _load_pairs([str(sim)])
