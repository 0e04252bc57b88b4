"""facet-train --device: resolution and clear errors on any machine; on a machine with a CUDA GPU,
training there equals training on the CPU and writes files that load on the CPU."""

from __future__ import annotations

import json

import ase.io
import pytest
import torch

import facet
from facet.data.emt import generate
from facet.train import cli
from facet.train.device import DeviceError, resolve_device

torch.set_num_threads(1)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("device") / "tiny.xyz"
    ase.io.write(path, generate(seed=0, size="tiny")[:8], format="extxyz")
    return path


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "gpu"):
        with pytest.raises(DeviceError, match="device"):
            resolve_device(bad)


@no_cuda
def test_cuda_without_a_gpu_is_a_clear_error(tiny_file, tmp_path, capsys):
    with pytest.raises(DeviceError, match=r"torch sees no CUDA GPU.*--device cpu"):
        resolve_device("cuda")
    rc = cli.main(["--train", str(tiny_file), "--device", "cuda", "--epochs", "1", "--quiet",
                   "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "--device cuda: torch sees no CUDA GPU" in err
    assert not (tmp_path / "x").exists()


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)


@cuda
def test_training_on_cuda_equals_cpu_and_files_load_on_the_cpu(tiny_file, tmp_path):
    args = ["--train", str(tiny_file), "--preset", "tiny", "--valid-fraction", "0.25",
            "--batch-size", "3", "--dtype", "float64", "--threads", "1", "--quiet",
            "--save-every", "1"]
    for device in ("cpu", "cuda"):
        cli.run(cli.build_parser().parse_args([*args, "--epochs", "2", "--device", device,
                                               "--out", str(tmp_path / device)]))
    m = {d: json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("cpu", "cuda")}
    assert m["cuda"]["meta"]["device"].startswith("cuda")
    for a, b in zip(m["cpu"]["epochs"], m["cuda"]["epochs"], strict=True):
        for key in ("train_loss", "valid_loss", "valid_f_mae_mev_a"):
            assert b[key] == pytest.approx(a[key], rel=1e-8), key
    for name in ("last.pt", "last.state.pt", "best.pt"):
        payload = torch.load(tmp_path / "cuda" / name, weights_only=True)
        assert all(t.device.type == "cpu" for t in _tensors(payload)), name
    model = facet.load_model(tmp_path / "cuda" / "last.pt")
    assert next(model.parameters()).device.type == "cpu"
    # a GPU run resumes on the CPU
    cli.run(cli.build_parser().parse_args(
        [*args, "--epochs", "3", "--device", "cpu", "--out", str(tmp_path / "cuda"),
         "--resume", str(tmp_path / "cuda" / "last.pt")]))
    assert json.loads((tmp_path / "cuda" / "metrics.json").read_text())["epochs"][-1][
        "epoch"] == 3
