"""The installer's decisions and errors, without rebuilding anything (CI builds it once, for real)."""

from __future__ import annotations

import contextlib
import json
import tarfile
from pathlib import Path

import pytest

from serve_app import triton_layout
from serve_app.triton_install import __main__ as installer
from serve_app.triton_install import pytorch_backend, requests_extension
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
    """Also in a --gpu install (tests/gpu_build), whose torch says 2.13.0+cu130 and pip 2.13.0."""
    installer.install(gpu=triton_layout.installed()["gpu"])
    assert "already installed" in capsys.readouterr().out
    assert triton_layout.installed()["torch"] == pytorch_backend.torch_build_facts()["torch"]
    assert triton_layout.pytorch_backend_problem() is None


def test_an_existing_core_is_one_library_in_the_folder_or_just_below(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="no libtritonserver"):
        installer.existing_core_library(tmp_path)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libtritonserver.so").write_bytes(b"")
    assert installer.existing_core_library(tmp_path) == tmp_path / "lib" / "libtritonserver.so"
    (tmp_path / "libtritonserver-1234.so").write_bytes(b"")
    with pytest.raises(InstallError, match="several cores"):
        installer.existing_core_library(tmp_path)


@pytest.mark.parametrize(
    "argv",
    [["install", "--extension-only"], ["install", "--core", "/opt/tritonserver"],
     ["install", "--extension-only", "--core", "/opt/tritonserver", "--gpu"]],
)  # fmt: skip
def test_extension_only_takes_a_core_and_nothing_else(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        installer.main(argv)


def test_a_torch_upgrade_is_reported_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_layout, "install_root", lambda: tmp_path)
    (tmp_path / triton_layout.STAMP).write_text(json.dumps({"torch": "1.0.0"}))
    problem = triton_layout.pytorch_backend_problem()
    assert problem is not None and "built against torch 1.0.0" in problem
    assert triton_layout.INSTALL_COMMAND in problem
    assert triton_layout.backend_directory() is None  # no libraries in an empty root


def test_a_changed_extension_source_rebuilds_the_extension_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The install records the extension's source digest: an edit rebuilds it (seconds), not the
    core or the PyTorch backend (minutes); the next install rebuilds nothing."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "extension.so").write_bytes(b"an older build")
    backend = {
        **pytorch_backend.torch_build_facts(),
        "gpu": False,
        "pytorch_backend": pytorch_backend.BRANCH,
    }
    recorded = {**installer._core_wanted(), **backend, "requests_extension": "an older source"}
    (root / triton_layout.STAMP).write_text(json.dumps(recorded))

    def must_not_run(*_: object) -> None:
        raise AssertionError("rebuilt what had not changed")

    built: list[str] = []  # the core file names it was linked against
    monkeypatch.setattr(installer, "install_root", lambda: root)
    monkeypatch.setattr(installer, "installed", lambda: json.loads((root / triton_layout.STAMP).read_text()))
    monkeypatch.setattr(installer, "_core_current", lambda: True)
    monkeypatch.setattr(installer, "backend_directory", lambda: str(root))
    monkeypatch.setattr(installer, "requests_extension_path", lambda: root / "extension.so")
    monkeypatch.setattr(installer.core, "check_prerequisites", lambda: None)
    monkeypatch.setattr(installer.core, "core_sources", lambda: contextlib.nullcontext(tmp_path))
    monkeypatch.setattr(installer.core, "core_library", lambda: "libtritonserver-test.so")
    monkeypatch.setattr(installer.core, "install_core", must_not_run)
    monkeypatch.setattr(installer.pytorch_backend, "build", must_not_run)
    monkeypatch.setattr(
        installer.requests_extension, "build", lambda _include, library: built.append(library.name)
    )

    installer.install()
    assert built == ["libtritonserver-test.so"]
    stamp = json.loads((root / triton_layout.STAMP).read_text())
    assert stamp == {**recorded, "requests_extension": requests_extension.source_digest()}
    capsys.readouterr()
    installer.install()
    assert built == ["libtritonserver-test.so"] and "already installed" in capsys.readouterr().out
