"""Data-parallel training: shards of a global batch give the global batch's loss and gradients,
and ``torchrun`` with two CPU processes (gloo) trains exactly like one process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest
import torch
from conftest import randomized_model

import facet
from facet.data.emt import generate
from facet.train import cli
from facet.train.data import build_graphs, collate, elements_of, label_summary, read_labelled
from facet.train.distributed import shard
from facet.train.loss import LossNorm, LossWeights, loss_fn
from facet.train.predict import predict
from facet.train.trainer import load_state_file

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """13 EMT frames of 6-48 atoms (bulk, alloys, vacancies, slabs without stress, MD)."""
    path = tmp_path_factory.mktemp("dist") / "tiny.xyz"
    ase.io.write(path, generate(seed=0, size="tiny"), format="extxyz")
    return path


def test_shard_is_a_deterministic_balanced_partition():
    batch = [7, 3, 11, 0, 5, 9, 2]
    atoms = [30, 8, 32, 27, 16, 36, 6]
    for world in (1, 2, 3, 7, 9):
        parts = [shard(batch, atoms, r, world) for r in range(world)]
        assert sorted(sum(parts, [])) == sorted(batch)  # every frame once
        for p in parts:  # global order kept
            assert p == [i for i in batch if i in p]
        assert parts == [shard(batch, atoms, r, world) for r in range(world)]
        if world <= len(batch):
            assert all(parts)
    loads = [sum(atoms[batch.index(i)] for i in shard(batch, atoms, r, 2)) for r in range(2)]
    assert abs(loads[0] - loads[1]) <= max(atoms)  # greedy largest-first balance
    assert shard([4], [10], 1, 2) == []  # fewer frames than processes: an empty shard


def test_shard_losses_and_gradients_add_up_to_the_global_batch(tiny_file):
    """The loss of each shard, normalised by the global batch's counts, sums to the global
    loss, and so do the gradients, for shards of unequal structures, atoms and labels (slabs
    without stress, a frame without forces). A mean of per-shard means would not."""
    frames = read_labelled(tiny_file)
    elements = elements_of(frames)
    model = randomized_model(facet.facet_tiny(elements), torch.float64)
    graphs = build_graphs(frames, elements, 4.0, dtype=torch.float64)
    graphs[3] = dataclasses.replace(graphs[3], forces=None)
    batch_idx = [0, 3, 5, 8, 9, 12]  # bulk, alloy, ..., slabs (no stress)
    info = label_summary(graphs)[batch_idx]
    w = LossWeights(energy=1.0, forces=10.0, stress=100.0)
    params = list(model.parameters())

    def loss_and_grads(idx, norm=None):
        batch = collate([graphs[i] for i in idx])
        loss = loss_fn(predict(model, batch, create_graph=True), batch, w, norm)
        return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

    full, g_full = loss_and_grads(batch_idx)
    norm = LossNorm.of_frames(info[:, 0], info[:, 1], info[:, 2])
    assert norm == LossNorm.of_batch(collate([graphs[i] for i in batch_idx]))
    for world in (2, 3):
        parts = [shard(batch_idx, info[:, 0], r, world) for r in range(world)]
        shares = [loss_and_grads(p, norm) for p in parts]
        total = sum(s for s, _ in shares)
        assert float(total) == pytest.approx(float(full), rel=1e-12)
        for k, g in enumerate(g_full):
            parts_g = [s[1][k] for s in shares if s[1][k] is not None]
            torch.testing.assert_close(sum(parts_g), g, rtol=1e-11, atol=1e-14)
        mean_of_means = sum(loss_and_grads(p)[0] for p in parts) / world
        assert abs(float(mean_of_means) / float(full) - 1) > 1e-3


def _torchrun(args, nproc, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "facet.train.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_train_like_one(tiny_file, tmp_path):
    """torchrun, 2 CPU processes on gloo, against one process on the same global batches:
    the same losses every epoch, validation errors, raw and EMA weights and optimiser state
    after 8 steps (batches of 3: 3 split 2 + 1 by atom count; the last batch of each epoch
    has 1 frame, so rank 1's shard is empty), and only rank 0 logs and writes files."""
    args = ["--train", str(tiny_file), "--preset", "tiny", "--valid-fraction", "0.25",
            "--batch-size", "3", "--valid-batch-size", "2", "--epochs", "2", "--lr", "1e-2",
            "--dtype", "float64", "--threads", "1", "--seed", "0", "--ema-decay", "0.9",
            "--stress-weight", "10", "--device", "cpu", "--save-every", "1"]
    one = tmp_path / "one"
    cli.run(cli.build_parser().parse_args([*args, "--quiet", "--out", str(one)]))
    two = tmp_path / "two"
    res = _torchrun([*args, "--out", str(two)], 2, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("epoch    1/2") == 1 and "2 process(es)" in res.stdout
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())

    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["meta"]["processes"] == 2 and m1["meta"]["processes"] == 1
    for r1, r2 in zip(m1["epochs"], m2["epochs"], strict=True):
        assert r1["step"] == r2["step"]
        for key in ("train_loss", "valid_loss", "train_f_mae_mev_a", "valid_e_mae_mev_atom",
                    "valid_f_mae_mev_a", "valid_s_mae_mev_a3"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-10), key
    assert m2["final"]["valid_f_rmse_mev_a"] == pytest.approx(m1["final"]["valid_f_rmse_mev_a"],
                                                             rel=1e-10)
    s1 = load_state_file(one / "last.state.pt")
    s2 = load_state_file(two / "last.state.pt")
    assert s1["step"] == s2["step"] == 8
    for k, p in s1["model"].items():
        torch.testing.assert_close(s2["model"][k], p, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(s2["ema"]["shadow"][k], s1["ema"]["shadow"][k],
                                   rtol=1e-10, atol=1e-13)
    assert s1["optimizer"]["state"].keys() == s2["optimizer"]["state"].keys()
    for k, st in s1["optimizer"]["state"].items():
        torch.testing.assert_close(s2["optimizer"]["state"][k]["exp_avg"], st["exp_avg"],
                                   rtol=1e-9, atol=1e-15)
    assert m1["epochs"][1]["train_loss"] < 0.9 * m1["epochs"][0]["train_loss"]  # it trains
