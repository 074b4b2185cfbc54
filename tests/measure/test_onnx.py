"""Writing ONNX files (issue 28): atomically, never through a link, never half, weights over the
protobuf limit in one file named after the output; what cannot be exported faithfully (an
operator ONNX lacks, a pool it cannot express, a branch on a tensor's values) is refused in one
line, and nothing is written."""

from __future__ import annotations

import errno
import os
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import nas_sepconv.measure.onnx as nsonnx
from nas_sepconv.errors import UserInputError
from nas_sepconv.measure import onnx_session, run_onnx, to_onnx
from nas_sepconv.models import tiny_convnet

pytestmark = pytest.mark.usefixtures("one_thread")


class _Fft(nn.Module):  # aten::fft_fft2: no ONNX operator at opset 17
    def forward(self, x):
        return torch.fft.fft2(x).real


class _Pool3(nn.Module):  # an adaptive pool to 3x3 of a 7x7 input: not a factor, ONNX cannot express it
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((3, 3))

    def forward(self, x):
        return self.pool(x)


class _BranchOnValues(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:  # the example decides which branch the trace keeps
            return y * 2
        return -y


class _BranchOnShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.shape[-1] > 4:  # the same for every input of this size: exported as usual
            y = y * 2
        return y


def _old_file(path):
    path.write_bytes(b"the good file of yesterday")
    return path.read_bytes()


def test_an_onnx_file_replaces_a_link_and_never_writes_its_target(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("not yours to overwrite")
    link = tmp_path / "m.onnx"
    link.symlink_to(target)
    to_onnx(tiny_convnet().eval(), torch.randn(1, 1, 16, 16), link)
    assert target.read_text() == "not yours to overwrite"
    assert not link.is_symlink() and link.is_file()
    (y,) = run_onnx(onnx_session(link, threads=1), torch.randn(2, 1, 16, 16))
    assert y.shape == (2, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "precious.txt"]


@pytest.mark.parametrize(
    "model, size, words",
    [
        (_Fft(), 8, "aten::fft_fft2"),
        (_Pool3(), 7, "adaptive_avg_pool2d"),
    ],
    ids=["operator", "adaptive-pool"],
)
def test_what_onnx_cannot_express_is_refused_and_the_old_file_stays(tmp_path, capfd, model, size, words):
    out = tmp_path / "m.onnx"
    before = _old_file(out)
    with pytest.raises(UserInputError, match=f"cannot be exported to ONNX opset 17.*{words}") as info:
        to_onnx(model, torch.randn(1, 3, size, size), out, instead="do something else", exporter="torchscript")
    assert info.value.field == "model" and info.value.fix == "do something else"
    assert "\n" not in str(info.value) and len(str(info.value)) < 400
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    captured = capfd.readouterr()  # torch prints its whole graph to stdout when an export fails: held back
    assert "graph(" not in captured.out + captured.err


def test_a_branch_on_a_tensors_values_is_refused_naming_the_line(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(UserInputError, match=r"branches on a tensor's values \(at test_onnx.py:\d+\)") as info:
        to_onnx(_BranchOnValues(), torch.randn(1, 3, 8, 8), out, exporter="torchscript")
    assert "torch.where" in info.value.fix and ".safetensors" in info.value.fix
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(UserInputError, match="branches on a tensor's values"):  # to bytes (the runtimes) too
        to_onnx(_BranchOnValues(), torch.randn(1, 3, 8, 8), exporter="torchscript")


def test_the_dynamo_exporter_refuses_a_branch_on_values_too(tmp_path):
    """torch.export stops at a data-dependent branch: nothing is written, the error says so."""
    out = tmp_path / "m.onnx"
    with pytest.raises(UserInputError, match="branches on a tensor's values") as info:
        to_onnx(_BranchOnValues(), torch.randn(1, 3, 8, 8), out)
    assert info.value.field == "model" and "torch.where" in info.value.fix
    assert not out.exists() and not list(tmp_path.iterdir())


def test_an_unknown_exporter_is_refused_naming_the_known_ones():
    with pytest.raises(UserInputError, match="unknown ONNX exporter 'jit'") as info:
        to_onnx(tiny_convnet().eval(), torch.randn(1, 1, 16, 16), exporter="jit")
    assert info.value.field == "exporter" and "dynamo, torchscript" in info.value.fix


def test_without_onnxscript_the_dynamo_exporter_names_the_package_and_the_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import fails, as when it is not installed
    with pytest.raises(UserInputError, match="needs the onnxscript package") as info:
        to_onnx(tiny_convnet().eval(), torch.randn(1, 1, 16, 16))
    assert "exporter='torchscript'" in info.value.fix


def test_a_branch_on_shapes_only_is_exported(tmp_path):
    net = _BranchOnShape().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", nsonnx.OnnxTraceWarning)
        path = to_onnx(net, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    batch = torch.randn(3, 3, 8, 8)
    (y,) = run_onnx(onnx_session(path, threads=1), batch)
    with torch.no_grad():
        np.testing.assert_allclose(y, net(batch).numpy(), rtol=1e-4, atol=1e-5)


def test_weights_over_the_limit_go_to_one_file_named_after_the_output(tmp_path, monkeypatch):
    """ONNX files stop at 2 GiB: larger weights are external data.  They go to ONE file,
    ``<out>.data``, never to files named after the tensors beside it (the user's files)."""
    monkeypatch.setattr(nsonnx, "EXTERNAL_DATA_BYTES", 0)  # every model is "over 2 GiB"
    net = tiny_convnet().eval()
    names = [*net.state_dict(), "model.onnx"]
    for name in names:
        (tmp_path / name).write_text("the user's own file")
    out = to_onnx(net, torch.randn(1, 1, 16, 16), tmp_path / "m.onnx")
    assert all((tmp_path / name).read_text() == "the user's own file" for name in names)
    assert sorted(set(p.name for p in tmp_path.iterdir()) - set(names)) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx.data").stat().st_size > (tmp_path / "m.onnx").stat().st_size
    batch = torch.randn(2, 1, 16, 16)
    (y,) = run_onnx(onnx_session(out, threads=1), batch)
    with torch.no_grad():
        np.testing.assert_allclose(y, net(batch).numpy(), rtol=1e-4, atol=1e-5)


def test_a_write_that_fails_leaves_the_old_file_and_no_stub(tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    before = _old_file(out)

    def no_space(src, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(nsonnx, "publish", no_space)
    with pytest.raises(OSError, match="No space left"):
        to_onnx(tiny_convnet().eval(), torch.randn(1, 1, 16, 16), out)
    assert out.read_bytes() == before and os.listdir(tmp_path) == ["m.onnx"]
