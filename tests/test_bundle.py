"""`edge-digr bundle pack|unpack`: round trip, and refusal of every member that could land outside the target."""
import io
import json
import tarfile

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")

from edge_digr.cli import main  # noqa: E402
from edge_digr.core.errors import UserError  # noqa: E402
from edge_digr.core.fileio import sha256_file  # noqa: E402
from edge_digr.core.manifest import read_onnx_manifest  # noqa: E402
from edge_digr.runtime.bundle import FORMAT, INDEX, pack, unpack  # noqa: E402
from test_profile import tiny_fused  # noqa: E402


@pytest.fixture
def packed(tmp_path):
    model = tiny_fused(tmp_path / "student.onnx")
    calib = tmp_path / "calib"
    (calib / "sub").mkdir(parents=True)
    (calib / "frames.npz").write_bytes(b"frames" * 100)
    (calib / "sub" / "student.int8.cache").write_text("TRT-8501-EntropyCalibration2\n")
    extra = tmp_path / "more.npz"
    extra.write_bytes(b"more")
    archive = tmp_path / "student.bundle.tar.gz"
    members = pack(model, archive, [calib, extra])
    return model, archive, members


def test_round_trip_keeps_every_file_and_the_manifest(packed, tmp_path):
    model, archive, members = packed
    roles = {m.name: m.role for m in members}
    assert roles == {"manifest.json": "manifest", "model/student.onnx": "model",
                     "model/student.forward.onnx": "forward", "calibration/calib/frames.npz": "calibration",
                     "calibration/calib/sub/student.int8.cache": "calibration", "calibration/more.npz": "calibration"}
    out = tmp_path / "device"
    written = unpack(archive, out)
    assert written[0] == (out / INDEX).resolve()
    assert sha256_file(out / "model/student.onnx") == sha256_file(model)
    assert (out / "calibration/calib/sub/student.int8.cache").read_text() == "TRT-8501-EntropyCalibration2\n"
    index = json.loads((out / INDEX).read_text())
    assert index["format"] == FORMAT and index["task"] == "minigrid-fetch"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == json.loads(read_onnx_manifest(model).to_json())
    assert read_onnx_manifest(out / "model/student.forward.onnx").output_names == ["logits"]


def _evil(tmp_path, add):
    """A bundle whose index is valid, with extra members from `add(tar)`."""
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = json.dumps({"format": FORMAT, "task": "t", "model": "m", "members": []}).encode()
        info = tarfile.TarInfo(INDEX)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        add(tar)
    return path


def _file(name, data=b"x"):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return add


def _link(name, target, kind):
    def add(tar):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        tar.addfile(info)
    return add


@pytest.mark.parametrize("add, why", [
    (_file("../escape.txt"), "'..'"),
    (_file("model/../../escape.txt"), "'..'"),
    (_file("/tmp/absolute.txt"), "absolute"),
    (_link("model/link.onnx", "/etc/passwd", tarfile.SYMTYPE), "links"),
    (_link("model/hard.onnx", "../../etc/passwd", tarfile.LNKTYPE), "links"),
    (_link("dev", "", tarfile.CHRTYPE), "only regular files"),
    (_file("calibration/unlisted.npz"), "not in its index"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device", "unlisted"])
def test_unsafe_members_refuse_the_whole_archive(tmp_path, add, why):
    archive = _evil(tmp_path, add)
    target = tmp_path / "target"
    with pytest.raises(UserError, match=why):
        unpack(archive, target)
    assert list(target.iterdir()) == []  # nothing written, not even the index
    assert not (tmp_path / "escape.txt").exists()


def test_a_symlinked_folder_inside_the_target_is_not_followed(packed, tmp_path):
    _, archive, _ = packed
    target, elsewhere = tmp_path / "target", tmp_path / "elsewhere"
    target.mkdir()
    elsewhere.mkdir()
    (target / "model").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match="resolves outside"):
        unpack(archive, target)
    assert list(elsewhere.iterdir()) == []


def test_corrupt_member_is_refused_by_its_sha256(packed, tmp_path):
    _, archive, _ = packed
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(tampered, "w:gz") as tar:
        for info, data in members:
            if info.name == "model/student.onnx":
                data = data[:-1] + bytes([data[-1] ^ 1])
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(UserError, match="sha256 mismatch"):
        unpack(tampered, tmp_path / "out")
    assert not (tmp_path / "out/model/student.onnx").exists()


def test_not_a_bundle(tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(UserError, match="not a readable bundle"):
        unpack(tmp_path / "x.tar.gz", tmp_path / "out")
    plain = tmp_path / "plain.tar.gz"
    with tarfile.open(plain, "w:gz") as tar:
        _file("a.txt")(tar)
    with pytest.raises(UserError, match="not an edge-digr bundle"):
        unpack(plain, tmp_path / "out")


def test_pack_refuses_symlinked_calibration_and_non_onnx(tmp_path):
    model = tiny_fused(tmp_path / "student.onnx")
    (tmp_path / "real.npz").write_bytes(b"x")
    (tmp_path / "link.npz").symlink_to(tmp_path / "real.npz")
    with pytest.raises(UserError, match="symbolic link"):
        pack(model, tmp_path / "b.tar.gz", [tmp_path / "link.npz"])
    with pytest.raises(UserError, match="not an ONNX file"):
        pack(tmp_path / "real.npz", tmp_path / "b.tar.gz")
    assert not (tmp_path / "b.tar.gz").exists()


def test_cli_pack_and_unpack(tmp_path):
    model = tiny_fused(tmp_path / "student.onnx")
    archive = tmp_path / "b.tar.gz"
    runner = CliRunner()
    result = runner.invoke(main, ["bundle", "pack", str(model), "--out", str(archive), "--no-forward"])
    assert result.exit_code == 0, result.output
    assert "model/student.onnx" in result.output and "forward" not in result.output
    result = runner.invoke(main, ["bundle", "unpack", str(archive), "--out-dir", str(tmp_path / "dev")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dev/model/student.onnx").is_file()
    evil = _evil(tmp_path, _file("../x"))
    result = runner.invoke(main, ["bundle", "unpack", str(evil), "--out-dir", str(tmp_path / "dev2")])
    assert result.exit_code == 2 and "refusing bundle member" in result.output
