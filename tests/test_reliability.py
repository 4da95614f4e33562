"""Bad input and faults (issue 13): every case exits 2 with one line and no traceback, and no file is lost.

Each class of the fault campaign has one parametrised test: bad manifests, bad replays, bad numbers,
unwritable and full outputs, self-overwrite, foreign and corrupt checkpoints, the torch-free install's desktop
commands; then SIGTERM during a recording, bounded memory on long runs, bundles and CARLA addresses.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import io
import time
from contextlib import chdir, contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_digr.cli import main
from edge_digr.core.errors import UserError
from edge_digr.core.manifest import METADATA_KEY, Manifest, for_task
from edge_digr.core.tasks import get_task
from runtime_fixtures import contract_onnx

CLI = [sys.executable, "-c", "from edge_digr.cli import main; main()"]


# ----------------------------------------------------------------------------------------------- helpers
def digests(folder: Path) -> dict:
    """{relative path: sha256} of every file under `folder` (hidden temporary files included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(args, cwd: Path, message) -> str:
    """Run the command in `cwd`; assert exit 2 and one line naming `message` (or one of several), no traceback.

    In-process, for speed: an exception other than the CLI's own exit would be a traceback on the console."""
    with chdir(cwd):
        result = CliRunner().invoke(main, [str(a) for a in args])
    err = result.output.strip()
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (err, result.exception)
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert any(m in err for m in ([message] if isinstance(message, str) else message)), err
    return err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A minigrid-fetch teacher and labels, a car-racing policy, an ONNX model: the inputs of the commands."""
    import torch

    from edge_digr.checkpoint import save_checkpoint
    from edge_digr.labels import save_labels
    from edge_digr.policies import PixelPolicy, PolicyConfig

    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    # t.pt has the teacher architecture, as a real teacher does: distill starts its students from it.
    for name, task, arch in (("t.pt", "minigrid-fetch", "teacher"), ("car.pt", "car-racing", "edge")):
        save_checkpoint(root / name, PixelPolicy(PolicyConfig.for_task(get_task(task), arch=arch)), task,
                        role="teacher")
    task = get_task("minigrid-fetch")
    rng = np.random.default_rng(0)
    n = 6
    data = {spec.name: (rng.random((n,) + spec.shape) * 255).astype(np.float32) for spec in task.inputs}
    data.update(teacher_out=rng.normal(size=(n, task.action.n)).astype(np.float32),
                saliency=rng.random((n,) + task.obs_shape[1:]).astype(np.float32),
                episode=np.repeat(np.arange(3), 2).astype(np.int32))
    save_labels(root / "l.npz", data)
    contract_onnx(root / "m.onnx", "minigrid-fetch")
    return root


@pytest.fixture
def work(files, tmp_path):
    """A fresh folder holding copies of the inputs; the test asserts they are unchanged afterwards."""
    for p in files.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    return tmp_path


@contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False):
    """A small tmpfs at `path` (root with mount rights only: the test is skipped elsewhere, saying why)."""
    path.mkdir(exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'not permitted'}): "
                    "full and read-only outputs need one")
    try:
        yield path
    finally:
        # Lazy: detached even while a failed case's child process still holds a file open there.
        subprocess.run(["umount", "-l", str(path)], check=True)


# ------------------------------------------------------------------------------------------ bad manifests
def _with_manifest(path: Path, manifest: dict) -> Path:
    import onnx

    contract_onnx(path, "minigrid-fetch")
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = json.dumps(manifest)
    onnx.save(model, str(path))
    return path


def _good() -> dict:
    return json.loads(for_task("minigrid-fetch").to_json())


def _edit(change):
    manifest = _good()
    change(manifest)
    return manifest


BAD_MANIFESTS = {
    "input without shape": (lambda m: m["inputs"][0].pop("shape"), "needs a 'shape'"),
    "shape of strings": (lambda m: m["inputs"][0].update(shape="1x3x40x40"), "needs a 'shape'"),
    "action a string": (lambda m: m.update(action="left"), "'action' must be an object"),
    "action empty": (lambda m: m.update(action={}), "'action' must be an object"),
    "action count a string": (lambda m: m["action"].update(n="4"), "needs 'n'"),
    "names and count disagree": (lambda m: m["action"].update(names=["left"]), "needs 'names'"),
    "count disagrees with the head": (lambda m: m["action"].update(n=3, names=["a", "b", "c"]),
                                      "has 4 columns but 'action' counts 3"),
    "head width disagrees with the graph": (
        lambda m: (m["action"].update(n=3, names=["a", "b", "c"]), m["outputs"][0].update(shape=[-1, 3])),
        "gives output 'logits' the shape (N, 3) but the graph's is (N, 4)"),
    "no head output": (lambda m: m["outputs"].pop(0), "needs an output named 'logits'"),
    "outputs not a list": (lambda m: m.update(outputs={"logits": 4}), "outputs must be a non-empty list"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifests_are_one_line_errors(case, tmp_path):
    change, message = BAD_MANIFESTS[case]
    model = _with_manifest(tmp_path / "bad.onnx", _edit(change))
    before = digests(tmp_path)
    refused(["run", "--engine", model, "--max-steps", "2", "--json", "s.json"], tmp_path, message)
    assert digests(tmp_path) == before


def test_the_schema_accepts_what_the_exporter_writes():
    for task in ("minigrid-fetch", "atari-breakout", "car-racing", "carla"):
        assert Manifest.from_json(for_task(task).to_json()).task == task


# ------------------------------------------------------------------------------------------- bad replays
def _replay_strings(folder: Path) -> str:
    np.savez(folder / "r.npz", obs=np.array([["a"] * 4800]).reshape(1, 3, 40, 40), mission=np.zeros((1, 8)))
    return "replay:r.npz"


def _replay_empty(folder: Path) -> str:
    np.savez(folder / "r.npz", obs=np.zeros((0, 3, 40, 40), np.float32), mission=np.zeros((0, 8), np.float32))
    return "replay:r.npz"


def _replay_mixed_sizes(folder: Path) -> str:
    from PIL import Image

    (folder / "frames").mkdir()
    for i, size in enumerate([(40, 40), (40, 40), (48, 40)]):
        Image.new("RGB", size).save(folder / "frames" / f"{i:03d}.png")
    return "replay:frames"


@pytest.mark.parametrize("make, message", [
    (_replay_strings, "holds <U1 values, not numbers"),
    (_replay_empty, "holds no frames"),
    (_replay_mixed_sizes, "differ in size"),
], ids=["strings", "empty", "mixed-image-sizes"])
def test_bad_replays_are_one_line_errors(make, message, tmp_path):
    # A one-input model, so that a PNG folder is a valid replay source for it.
    task = "car-racing" if make is _replay_mixed_sizes else "minigrid-fetch"
    contract_onnx(tmp_path / "m.onnx", task)
    spec = make(tmp_path)
    before = digests(tmp_path)
    refused(["run", "--engine", "m.onnx", "--feed", spec, "--record", "r.gif"], tmp_path, message)
    assert digests(tmp_path) == before


# ------------------------------------------------------------------------------------------- bad numbers
BAD_NUMBERS = [
    (["label", "--teacher", "t.pt", "--out", "l2.npz", "--frames", "0"], "--frames"),
    (["label", "--teacher", "t.pt", "--out", "l2.npz", "--stride", "0"], "--stride"),
    (["label", "--teacher", "t.pt", "--out", "l2.npz", "--mask-sigma", "nan"], "not a finite number"),
    (["train-teacher", "--out", "t2.pt", "--steps", "0"], "--steps"),
    (["evaluate", "--policy", "t.pt", "--episodes", "0"], "--episodes"),
    (["evaluate", "--policy", "t.pt", "--episodes", "-1"], "--episodes"),
    (["distill", "--teacher", "t.pt", "--labels", "l.npz", "--out", "s.pt", "--lam", "nan"], "not a finite"),
    (["distill", "--teacher", "t.pt", "--labels", "l.npz", "--out", "s.pt", "--temperature", "inf"], "finite"),
    (["distill", "--teacher", "t.pt", "--labels", "l.npz", "--out", "s.pt", "--epochs", "0"], "--epochs"),
    (["calibrate", "m.onnx", "--data", "l.npz", "--out", "q.onnx", "--batch", "0"], "--batch"),
    (["calibrate", "m.onnx", "--data", "l.npz", "--out", "q.onnx", "--holdout", "nan"], "finite"),
    (["profile", "--engine", "m.onnx", "--perturbation-batch", "0"], "--perturbation-batch"),
    (["run", "--engine", "m.onnx", "--deadline-ms", "nan"], "not a finite number"),
    (["run", "--engine", "m.onnx", "--fps", "nan"], "not a finite number"),
    (["run", "--engine", "m.onnx", "--fps", "inf"], "not a finite number"),
    (["run", "--engine", "m.onnx", "--fps", "0"], "--fps"),
    (["export", "t.pt", "--out", "s.onnx", "--opset", "7"], "--opset"),
    (["selftest", "--engine", "m.onnx", "--frames", "0"], "--frames"),
    (["build", "m.onnx", "--out", "m.plan", "--calib-batch", "0"], "--calib-batch"),
]


@pytest.mark.parametrize("args, message", BAD_NUMBERS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_NUMBERS])
def test_bad_numbers_are_usage_errors(args, message, work):
    before = digests(work)
    refused(args, work, message)
    assert digests(work) == before


def test_attack_refuses_a_nan_epsilon(work):
    refused(["attack", "--policy", "t.pt", "--task", "minigrid-fetch", "--eps", "nan"], work, "--eps")


# ---------------------------------------------------------------------------------- unwritable outputs
UNWRITABLE = [
    (["run", "--engine", "m.onnx", "--max-steps", "2", "--json", "{out}/s.json"], "--json"),
    (["run", "--engine", "m.onnx", "--max-steps", "2", "--record", "{out}/r.mp4"], "--record"),
    (["run", "--engine", "m.onnx", "--max-steps", "2", "--save-feed", "{out}/f.npz"], "--save-feed"),
    (["export", "t.pt", "--out", "{out}/s.onnx"], "--out"),
    (["label", "--teacher", "t.pt", "--frames", "2", "--out", "{out}/l.npz"], "--out"),
    (["distill", "--teacher", "t.pt", "--labels", "l.npz", "--out", "{out}/s.pt"], "--out"),
    (["evaluate", "--policy", "t.pt", "--episodes", "1", "--json", "{out}/e.json"], "--json"),
    (["calibrate", "m.onnx", "--data", "l.npz", "--out", "{out}/q.onnx"], "--out"),
    (["profile", "--engine", "m.onnx", "--json", "{out}/p.json"], "--json"),
]


@pytest.mark.parametrize("where, reason", [
    ("ro", "read-only file system"),  # a read-only mount: chmod does not stop root
    ("afile", "is a file, not a folder"),  # the parent is a file
    ("folder", ("is a folder", "is a directory")),  # the output is a folder (click's own check, or ours)
])
@pytest.mark.parametrize("args, option", UNWRITABLE, ids=[a[0] + " " + o for a, o in UNWRITABLE])
def test_unwritable_outputs_are_refused_before_the_work(args, option, where, reason, work):
    (work / "afile").write_text("a file where a folder is expected")
    args = [a.format(out=where) for a in args]
    if where == "folder":
        (work / args[args.index(option) + 1]).mkdir(parents=True)
    with tmpfs(work / "ro", "64k", read_only=True) if where == "ro" else nullcontext():
        before = digests(work)
        message = refused(args, work, reason)
        assert digests(work) == before
    assert option in message


# --------------------------------------------------------------------------------------- full outputs
@pytest.mark.parametrize("option, name", [("--record", "r.mp4"), ("--record", "r.gif"), ("--save-feed", "f.npz")])
def test_a_full_disk_keeps_the_previous_file(option, name, work):
    with tmpfs(work / "full", "32k") as full:
        previous = full / name
        previous.write_bytes(b"the previous recording")
        before = digests(full)
        # 600 frames are more than 32 KB in each format (about 120 B a frame as H.264, more as GIF or npz).
        refused(["run", "--engine", "m.onnx", "--max-steps", "600", option, previous], work, str(previous))
        assert digests(full) == before  # the old file unchanged and no temporary file left beside it


def test_every_writer_keeps_the_name_it_was_given(tmp_path, files):
    from edge_digr.labels import save_labels

    data = {k: v for k, v in np.load(files / "l.npz").items()}
    save_labels(tmp_path / "labels.data", data)  # np.savez appends ".npz" to a name unless given a file
    assert [p.name for p in tmp_path.iterdir()] == ["labels.data"]
    assert set(np.load(tmp_path / "labels.data").files) == set(data)


# ------------------------------------------------------------------------------------- self-overwrite
@pytest.mark.parametrize("args", [
    ["export", "t.pt", "--out", "t.pt"],
    ["export", "t.pt", "--out", "./sub/../t.pt"],
    ["distill", "--teacher", "t.pt", "--labels", "l.npz", "--out", "t.pt"],
    ["distill", "--teacher", "t.pt", "--labels", "l.npz", "--out", "l.npz"],
    ["label", "--teacher", "t.pt", "--out", "t.pt"],
    ["calibrate", "m.onnx", "--data", "l.npz", "--out", "m.onnx"],
    ["evaluate", "--policy", "m.onnx", "--json", "m.onnx"],
    ["run", "--engine", "m.onnx", "--record", "m.onnx"],
    ["bundle", "pack", "m.onnx", "--out", "m.onnx"],
], ids=lambda a: " ".join(a))
def test_an_output_that_is_an_input_is_refused(args, work):
    (work / "sub").mkdir()
    before = digests(work)
    refused(args, work, "is also an input of this command")
    assert digests(work) == before


# ---------------------------------------------------------------------- foreign and corrupt checkpoints
def _empty(work):
    (work / "empty.pt").write_bytes(b"")


def _corrupt_resume(work):
    (work / "s.pt.resume.pt").write_bytes(b"PK\x03\x04 truncated")


def _foreign_resume(work):
    (work / "s.pt.resume.pt").write_bytes((work / "t.pt").read_bytes())


def _corrupt_progress(work):
    (work / "t2.sb3.zip").write_bytes(b"not a zip")
    (work / "t2.progress.json").write_text('{"task": "minigrid-fetch", "ste')


def _nothing_to_prepare(work):
    pass


DISTILL = ["distill", "--teacher", "t.pt", "--labels", "l.npz", "--out", "s.pt", "--epochs", "1",
           "--dagger-rounds", "0", "--quiet"]


@pytest.mark.parametrize("prepare, args, message", [
    (_nothing_to_prepare, ["label", "--task", "car-racing", "--teacher", "t.pt", "--out", "x.npz"],
     "t.pt was trained on 'minigrid-fetch', not 'car-racing'"),
    (_nothing_to_prepare, DISTILL + ["--task", "car-racing"], "was trained on 'minigrid-fetch', not 'car-racing'"),
    (_nothing_to_prepare, DISTILL[:-5] + ["--task", "car-racing", "--dagger-rounds", "1"],
     "was trained on 'minigrid-fetch'"),
    (_nothing_to_prepare, ["distill", "--teacher", "car.pt", "--labels", "l.npz", "--out", "s.pt"],
     "task 'car-racing' expects"),
    (_nothing_to_prepare, ["evaluate", "--policy", "t.pt", "--task", "car-racing"], "was trained on"),
    (_nothing_to_prepare, ["evaluate", "--policy", "m.onnx", "--task", "car-racing"], "was trained on"),
    (_nothing_to_prepare, ["export", "car.pt", "--task", "minigrid-fetch", "--out", "c.onnx"], "was trained on"),
    (_nothing_to_prepare, ["attack", "--policy", "car.pt", "--task", "minigrid-fetch", "--eps", "1"],
     "was trained on"),
    (_empty, ["label", "--teacher", "empty.pt", "--out", "x.npz"], "empty.pt is empty"),
    (_empty, ["export", "empty.pt", "--out", "x.onnx"], "empty.pt is empty"),
    (_corrupt_resume, DISTILL + ["--resume"], "s.pt.resume.pt is unreadable"),
    (_foreign_resume, DISTILL + ["--resume"], "is not a resume state of this command"),
    (_corrupt_progress, ["train-teacher", "--out", "t2.pt", "--resume", "--steps", "10"],
     "t2.progress.json is unreadable"),
], ids=["label-task", "distill-task", "dagger-task", "distill-labels-of-another-task", "evaluate-pt-task",
        "evaluate-onnx-task", "export-task", "attack-task", "label-empty", "export-empty", "corrupt-resume",
        "foreign-resume", "corrupt-progress"])
def test_foreign_and_corrupt_checkpoints_are_one_line_errors(prepare, args, message, work):
    prepare(work)
    before = digests(work)
    err = refused(args, work, message)
    assert digests(work) == before
    if "resume" in message or "progress" in message:
        assert "to start over" in err


def test_the_task_is_read_from_the_checkpoint(files):
    from edge_digr.checkpoint import policy_task

    assert policy_task(files / "car.pt") == "car-racing"
    assert policy_task(files / "m.onnx") == "minigrid-fetch"
    with pytest.raises(UserError, match="pass --task"):
        policy_task(files / "x.zip")


# ------------------------------------------------------------------------------------ torch-free install
BLOCKED = ("torch", "stable_baselines3", "onnx")
TORCH_FREE = (
    "import sys\n"
    "class Blocked:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.split('.')[0] in {BLOCKED!r}:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Blocked())\n"
    "from edge_digr.cli import main\n"
    "main()\n"
)


@pytest.mark.parametrize("args", [
    ["export", "t.pt", "--out", "x.onnx"],
    ["label", "--teacher", "t.pt", "--out", "x.npz", "--frames", "2"],
    ["distill", "--teacher", "t.pt", "--labels", "l.npz", "--out", "s.pt"],
    ["train-teacher", "--out", "t2.pt", "--steps", "10"],
    ["check", "m.onnx"],
    ["attack", "--policy", "t.pt", "--task", "minigrid-fetch", "--eps", "1"],
    ["demo", "--out-dir", "d", "--budget", "tiny"],
    ["evaluate", "--policy", "t.pt", "--episodes", "1"],
], ids=lambda a: a[0])
def test_the_torch_free_install_names_the_desktop_install(args, work):
    before = digests(work)
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, *args], cwd=work, capture_output=True, text=True,
                          timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "this command needs the desktop install: pip install 'edge-digr[train]'" in err
    assert digests(work) == before


def test_the_torch_free_install_runs_a_model(work):
    proc = subprocess.run([sys.executable, "-c", TORCH_FREE, "run", "--engine", "m.onnx", "--max-steps", "3"],
                          cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "steps 3" in proc.stdout, proc.stderr


# ---------------------------------------------------------------------------------- SIGTERM, recording
@pytest.mark.parametrize("name", ["r.mp4", "r.gif"])
def test_sigterm_closes_the_recording_and_leaves_no_temporary_file(name, work):
    proc = subprocess.Popen(CLI + ["run", "--engine", "m.onnx", "--max-steps", "1000000", "--record", name],
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Wait (no time assertion) until frames reach the temporary file, then stop the run as systemd does.
        while not _recording(work, name):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in out
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]
    import imageio.v2 as imageio

    steps = int(out.split()[1].rstrip(","))
    assert len(imageio.mimread(work / name, memtest=False)) == steps >= 1


def _recording(folder: Path, name: str) -> bool:
    for p in folder.glob(f".{name}.*"):
        try:
            return p.stat().st_size > 0
        except FileNotFoundError:
            return False
    return False


# ------------------------------------------------------------------------------- bounded memory, long runs
def test_gif_frames_are_on_disk_before_the_recording_closes(tmp_path):
    from edge_digr.runtime.overlay import Recorder

    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    with Recorder(tmp_path / "r.gif", fps=10) as rec:
        for _ in range(40):
            rec.add(frame)
        (tmp,) = [p for p in tmp_path.iterdir() if p.name.startswith(".r.gif.")]
        assert tmp.stat().st_size > 20 * 64 * 96 // 8  # streamed, not held in memory until close
    from PIL import Image

    with Image.open(tmp_path / "r.gif") as im:
        assert im.n_frames == 40 and im.info["loop"] == 0


def test_the_run_summary_stays_bounded_over_many_episodes():
    from edge_digr.runtime.loop import RETURNS_KEPT, RETURNS_SHOWN, RunSummary

    summary = RunSummary()
    for i in range(10_000):
        summary.add_return(float(i % 7))
    assert summary.episodes == 10_000 and len(summary.returns) == RETURNS_KEPT
    assert summary.mean_return == pytest.approx(np.mean([i % 7 for i in range(10_000)]))
    assert summary.returns[-1] == float(9_999 % 7)
    assert f"last {RETURNS_SHOWN} returns" in summary.text() and len(summary.text()) < 400


def test_the_latency_reservoir_is_exact_when_short_and_bounded_when_long():
    from edge_digr.runtime.stats import Reservoir

    short = Reservoir(capacity=100)
    values = np.random.default_rng(1).exponential(size=100)
    for v in values:
        short.add(v)
    assert short.percentile(99) == pytest.approx(np.percentile(values, 99))
    long = Reservoir(capacity=1000)
    for v in np.random.default_rng(2).uniform(size=100_000):
        long.add(v)
    assert long.count == 100_000 and len(long._values) == 1000
    assert long.percentile(50) == pytest.approx(0.5, abs=0.06)  # a uniform sample of the whole stream


# -------------------------------------------------------------------------------------------- bundles
def _bundle(tmp_path: Path, members: dict, announced: dict) -> Path:
    from edge_digr.runtime.bundle import FORMAT, INDEX

    index = {"format": FORMAT, "task": "t", "model": "m",
             "members": [{"name": n, "role": "calibration", "size": announced.get(n, len(d)),
                          "sha256": hashlib.sha256(d).hexdigest()} for n, d in members.items()]}
    path = tmp_path / "b.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [(INDEX, json.dumps(index).encode())] + list(members.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("members, announced, message", [
    ({"calibration/a.bin": b"a", "calibration/big.bin": b"x" * (1 << 20)}, {"calibration/big.bin": 10},
     "index announces 10"),
    ({"calibration/a.bin": b"a", "calibration/b.bin": b"b"}, {}, None),
], ids=["size-disagrees", "bad-checksum"])
def test_a_refused_bundle_leaves_nothing_in_the_target(members, announced, message, tmp_path):
    from edge_digr.runtime.bundle import unpack

    archive = _bundle(tmp_path, members, announced)
    if message is None:  # the last member's data differs from its sha256: the first one must not stay either
        with tarfile.open(archive) as tar:
            rows = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(archive, "w:gz") as tar:
            for info, data in rows:
                tar.addfile(info, io.BytesIO(b"c" if info.name.endswith("b.bin") else data))
        message = "sha256 mismatch"
    target = tmp_path / "target"
    target.mkdir()
    (target / "kept.txt").write_text("already here")
    with pytest.raises(UserError, match=message):
        unpack(archive, target)
    assert digests(target) == {"kept.txt": hashlib.sha256(b"already here").hexdigest()}


# ---------------------------------------------------------------------------------------------- CARLA
@pytest.mark.parametrize("query", ["retries=1000000", "retries=0", "timeout=nan", "timeout=inf", "timeout=1e9"])
def test_carla_query_values_out_of_range_are_refused(query):
    from edge_digr.runtime.feeds import parse_carla_url

    with pytest.raises(UserError, match="bad CARLA address"):
        parse_carla_url(f"carla://sim:2000?{query}")


def test_a_carla_host_that_does_not_resolve_is_retried_then_one_line():
    pytest.importorskip("carla")
    from edge_digr.core.carla_env import Backoff, connect

    waits = []
    with pytest.raises(UserError, match="no CARLA server answered at nosuch.invalid:2000 after 3 attempts"):
        connect("nosuch.invalid", 2000, timeout_s=0.1, backoff=Backoff(attempts=3), sleep=waits.append)
    assert len(waits) == 2  # retried like a refused connection
