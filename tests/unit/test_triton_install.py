"""The installer's decisions and errors, without rebuilding anything (CI builds it once, for real)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from serve_app import triton_layout
from serve_app.triton_install import __main__ as installer
from serve_app.triton_install import pytorch_backend
from serve_app.triton_install.build import InstallError, source_tree

MARKER = Path("pytorch_backend", "src", "libtorch.cc")


def test_sources_come_from_a_directory_or_an_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "src" / "triton-pytorch-backend"
    (tree / MARKER).parent.mkdir(parents=True)
    (tree / MARKER).write_text("// source")
    archive = tmp_path / "sources.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname=tree.name)
    for given in (tree, archive):
        monkeypatch.setenv("SRC", str(given))
        with source_tree("SRC", MARKER, {"x": "https://example.invalid/x"}, "r24.10") as source:
            assert (source / MARKER).read_text() == "// source"


def test_sources_without_the_marker_or_unreadable_are_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SRC", str(tmp_path))
    with (
        pytest.raises(InstallError, match=r"no pytorch_backend/src/libtorch\.cc in .*set SRC"),
        source_tree("SRC", MARKER, {}, "r24.10"),
    ):
        pass
    (tmp_path / "junk.tar.gz").write_bytes(b"not an archive")
    monkeypatch.setenv("SRC", str(tmp_path / "junk.tar.gz"))
    with (
        pytest.raises(InstallError, match="is not a directory or archive"),
        source_tree("SRC", MARKER, {}, "r24.10"),
    ):
        pass


def test_missing_rapidjson_says_which_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pytorch_backend, "RAPIDJSON_HEADER", tmp_path / "absent.h")
    with pytest.raises(InstallError, match="apt-get install rapidjson-dev"):
        pytorch_backend.build(tmp_path, tmp_path, gpu=False, work=tmp_path)


def test_a_gpu_build_needs_a_cuda_torch() -> None:
    import torch

    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build")
    with pytest.raises(InstallError, match="CUDA build of torch"):
        pytorch_backend.build(Path("."), Path("."), gpu=True, work=Path("."))


@pytest.mark.skipif(triton_layout.backend_directory() is None, reason="needs the installed build")
def test_a_second_install_rebuilds_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    installer.install()
    assert "already installed" in capsys.readouterr().out
    recorded = triton_layout.installed()
    assert recorded["torch"] == pytorch_backend.torch_build_facts()["torch"] and recorded["gpu"] is False


def test_a_torch_upgrade_is_reported_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_layout, "install_root", lambda: tmp_path)
    (tmp_path / triton_layout.STAMP).write_text(json.dumps({"torch": "1.0.0"}))
    problem = triton_layout.pytorch_backend_problem()
    assert problem is not None and "built against torch 1.0.0" in problem
    assert triton_layout.INSTALL_COMMAND in problem
    assert triton_layout.backend_directory() is None  # no libraries in an empty root
