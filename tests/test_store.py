"""Training data streamed from disk: ``facet-train --preprocess`` writes memory-mapped arrays one
frame at a time, the streamed set holds maps and an index (never the frames), and training from
it gives the same losses and weights as training from the extxyz in memory."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch

from facet.data.emt import generate
from facet.train import cli
from facet.train.data import (
    DataError,
    GraphFrame,
    LabelledFrame,
    build_graphs,
    elements_of,
    read_labelled,
)
from facet.train.store import FrameStore, StreamedGraphs, is_store, write_store
from facet.train.trainer import load_state_file

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "tiny.xyz"
    ase.io.write(path, generate(seed=0, size="tiny"), format="extxyz")
    return path


@pytest.fixture(scope="module")
def store_dir(tiny_file):
    out = tiny_file.with_name("tiny.frames")
    rc = cli.main(["--train", str(tiny_file), "--preprocess", str(out), "--quiet"])
    assert rc == 0 and is_store(out)
    return out


def test_store_holds_the_frames_of_the_file(tiny_file, store_dir):
    frames = read_labelled(tiny_file)
    store = FrameStore(store_dir)
    assert len(store) == len(frames) and store.elements == elements_of(frames)
    for k, f in enumerate(frames):
        g = store.frame(k)
        assert g.where == f.where and g.energy == f.energy
        assert g.atoms.get_chemical_symbols() == f.atoms.get_chemical_symbols()
        np.testing.assert_array_equal(g.atoms.positions, f.atoms.positions)
        np.testing.assert_array_equal(g.atoms.cell.array, f.atoms.cell.array)
        np.testing.assert_array_equal(g.atoms.pbc, f.atoms.pbc)
        np.testing.assert_array_equal(g.forces, f.forces)
        assert (g.stress is None) == (f.stress is None)
        if f.stress is not None:
            np.testing.assert_array_equal(g.stress, f.stress)
    assert any(f.stress is None for f in frames)  # slabs: stored without stress


def test_streamed_set_holds_maps_not_frames(tiny_file, store_dir, monkeypatch):
    store = FrameStore(store_dir)
    graphs = StreamedGraphs(store, [2, 0, 5], store.elements, 4.0, dtype=torch.float64)
    for name, arr in store.arrays.items():
        assert isinstance(arr, np.memmap), name
    assert isinstance(store.atom_offsets, np.memmap)

    def frame_like(x):
        return isinstance(x, (ase.Atoms, LabelledFrame, GraphFrame))

    for obj in (graphs, store):
        for name, value in vars(obj).items():
            assert not frame_like(value), name
            if isinstance(value, (list, tuple, dict)):
                items = value.values() if isinstance(value, dict) else value
                assert not any(frame_like(v) for v in items), name
    assert graphs[0] is not graphs[0]  # built when asked for, not cached
    expected = build_graphs([read_labelled(tiny_file)[2]], store.elements, 4.0,
                            dtype=torch.float64)[0]
    got = graphs[0]
    for field in ("species", "centre", "neighbour", "rij", "forces", "stress"):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field
    assert (got.energy, got.volume, got.where) == (expected.energy, expected.volume,
                                                   expected.where)
    np.testing.assert_array_equal(graphs.label_summary()[:, 0], [len(graphs[i].species)
                                                                 for i in range(3)])

    # preprocessing never reads the whole file at once: ase.io.read is not called
    def no_read(*a, **k):
        raise AssertionError("ase.io.read called")

    monkeypatch.setattr(ase.io, "read", no_read)
    write_store(tiny_file, store_dir.with_name("again.frames"))


def test_training_from_the_store_equals_training_in_memory(tiny_file, store_dir, tmp_path):
    args = ["--preset", "tiny", "--valid-fraction", "0.25", "--batch-size", "3", "--epochs",
            "2", "--lr", "1e-2", "--dtype", "float64", "--threads", "1", "--seed", "0",
            "--stress-weight", "10", "--quiet", "--save-every", "1", "--device", "cpu"]
    finals = {}
    for name, train in (("memory", tiny_file), ("streamed", store_dir)):
        finals[name] = cli.run(cli.build_parser().parse_args(
            ["--train", str(train), *args, "--out", str(tmp_path / name)]))
    m = {k: json.loads((tmp_path / k / "metrics.json").read_text()) for k in finals}
    assert m["streamed"]["meta"]["streamed"] and not m["memory"]["meta"]["streamed"]
    for a, b in zip(m["memory"]["epochs"], m["streamed"]["epochs"], strict=True):
        for key in ("train_loss", "valid_loss", "valid_f_mae_mev_a", "valid_s_mae_mev_a3"):
            assert b[key] == pytest.approx(a[key], rel=1e-12, abs=0), key
    assert finals["streamed"]["valid_loss"] == pytest.approx(finals["memory"]["valid_loss"],
                                                             rel=1e-12)
    sa = load_state_file(tmp_path / "memory" / "last.state.pt")
    sb = load_state_file(tmp_path / "streamed" / "last.state.pt")
    for k, p in sa["model"].items():
        torch.testing.assert_close(sb["model"][k], p, rtol=1e-12, atol=1e-15)
    assert sa["meta"]["avg_num_neighbors"] == sb["meta"]["avg_num_neighbors"]
    assert sa["meta"]["reference_energies"] == sb["meta"]["reference_energies"]


def test_store_errors_name_the_file_and_frame(tiny_file, store_dir, tmp_path, capsys):
    frames = ase.io.read(tiny_file, ":")
    forces = frames[4].calc.results["forces"].copy()
    forces[2, 0] = np.nan
    frames[4].calc.results["forces"] = forces
    bad = tmp_path / "bad.xyz"
    ase.io.write(bad, frames, format="extxyz")
    with pytest.raises(DataError, match=r"bad\.xyz, frame 4: forces 'forces' contain NaN"):
        write_store(bad, tmp_path / "bad.frames")
    assert not (tmp_path / "bad.frames").exists()
    assert not (tmp_path / "bad.frames.partial").exists()
    with pytest.raises(DataError, match="exists already"):
        write_store(tiny_file, store_dir)

    frames[4].calc.results.pop("forces")  # no forces: stored, refused for a force loss
    nof = tmp_path / "noforces.xyz"
    ase.io.write(nof, frames, format="extxyz")
    write_store(nof, tmp_path / "nof.frames")
    rc = cli.main(["--train", str(tmp_path / "nof.frames"), "--preset", "tiny", "--epochs", "1",
                   "--quiet", "--out", str(tmp_path / "x")])
    assert rc == 2 and "noforces.xyz, frame 4: no forces label 'forces'" in capsys.readouterr().err
    # a bad streamed validation frame stops the run before training, not after an epoch
    close = frames[0].copy()
    close.calc = frames[0].calc
    close.positions[1] = close.positions[0] + [0.05, 0.0, 0.0]
    ase.io.write(tmp_path / "close.xyz", [close], format="extxyz")
    write_store(tmp_path / "close.xyz", tmp_path / "close.frames")
    rc = cli.main(["--train", str(store_dir), "--valid", str(tmp_path / "close.frames"),
                   "--preset", "tiny", "--epochs", "1", "--quiet", "--device", "cpu",
                   "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert rc == 2 and "close.xyz, frame 0: atoms 0 and 1 are 0.05 Å apart" in err, err
    assert not (tmp_path / "y").exists()
    (tmp_path / "nof.frames" / "energy.bin").write_bytes(b"\0" * 8)
    with pytest.raises(DataError, match=r"energy\.bin: missing or truncated"):
        FrameStore(tmp_path / "nof.frames")
