"""Scale-out (issue 15): labels on Ray equal the serial ones, a dead worker is retried, Ctrl-C cancels and
writes nothing, a failed study job loses no other result; distill under torchrun follows one process;
--device everywhere; without ray, --ray is a one-line install hint."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge_digr.checkpoint import load_checkpoint, save_checkpoint
from edge_digr.cli import main
from edge_digr.core.errors import UserError
from edge_digr.labels import add_perturbation_maps, collect, save_labels
from edge_digr.devices import resolve_device
from edge_digr.core.perturbation import PerturbationConfig
from edge_digr.policies import PixelPolicy, PolicyConfig
from edge_digr.core.tasks import get_task

TASK = get_task("minigrid-fetch")
FRAMES = 6
# One process and two sum the batch in another order (each rank its share, then all_reduce): the weights
# agree to float32 rounding, amplified a little by Adam. Measured: 1e-6 after 6 steps (weights up to 0.35).
DDP_ATOL = 1e-5


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a cluster found here
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return PixelPolicy(PolicyConfig.for_task(TASK, "edge")).eval()


@pytest.fixture(scope="module")
def frames(teacher):
    return collect(teacher, TASK, FRAMES, seed=0, progress=False)


CONFIG = PerturbationConfig(stride=8)  # 25 masks a 40x40 frame: quick, every code path the same


def _serial(teacher, frames):
    data = dict(frames)
    add_perturbation_maps(teacher, TASK, data, CONFIG, progress=False)
    return data["saliency"]


def test_ray_labels_equal_the_serial_ones(ray_local, teacher, frames):
    data = dict(frames)
    add_perturbation_maps(teacher, TASK, data, CONFIG, progress=False, ray_address="local", ray_chunk=4)
    np.testing.assert_allclose(data["saliency"], _serial(teacher, frames), rtol=0, atol=1e-6)


def _die_once(marker):
    """A Ray task body that kills its worker process on the very first attempt of any task."""
    def work(weights, inputs, config):
        from edge_digr.ray_jobs import label_chunk

        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # atomic: exactly one attempt wins
        except FileExistsError:
            return label_chunk(weights, inputs, config)
        os._exit(1)
    return work


def test_a_dead_worker_is_retried_and_the_labels_are_the_same(ray_local, teacher, frames, tmp_path):
    from edge_digr.ray_jobs import ray_perturbation_maps

    marker = tmp_path / "died"
    names = [spec.name for spec in TASK.inputs]
    maps = ray_perturbation_maps(teacher, names, dict(frames), CONFIG, "local", chunk=2, progress=False,
                                 work=_die_once(str(marker)))
    assert marker.exists()  # a task did die
    np.testing.assert_allclose(maps, _serial(teacher, frames), rtol=0, atol=1e-6)


def _teacher_file(teacher, tmp_path):
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, teacher, TASK.name, "teacher")
    return path


def test_label_command_with_ray_writes_the_serial_file(ray_local, teacher, tmp_path):
    path = _teacher_file(teacher, tmp_path)
    common = ["label", "--teacher", str(path), "--frames", "4", "--stride", "8", "--quiet", "--device", "cpu"]
    for out, extra in (("serial.npz", []), ("ray.npz", ["--ray", "--ray-chunk", "3"])):
        result = CliRunner().invoke(main, common + ["--out", str(tmp_path / out)] + extra)
        assert result.exit_code == 0, result.output
    with np.load(tmp_path / "serial.npz") as a, np.load(tmp_path / "ray.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-6, err_msg=key)


def test_ctrl_c_cancels_the_outstanding_tasks_and_writes_nothing(ray_local, teacher, tmp_path, monkeypatch):
    from edge_digr.labels import label

    cancelled = []
    real_cancel = ray_local.cancel

    def interrupted_wait(*args, **kwargs):
        raise KeyboardInterrupt

    def recording_cancel(ref, **kwargs):
        cancelled.append(ref)
        return real_cancel(ref, **kwargs)

    monkeypatch.setattr(ray_local, "wait", interrupted_wait)
    monkeypatch.setattr(ray_local, "cancel", recording_cancel)
    with pytest.raises(KeyboardInterrupt):
        label(teacher, TASK, 4, 0, tmp_path / "labels.npz", CONFIG, progress=False, ray_address="local", ray_chunk=2)
    assert len(cancelled) == 2  # both chunks were outstanding
    assert list(tmp_path.iterdir()) == []  # no labels.npz, no temporary file


@pytest.mark.parametrize("address", [None, "local"])
def test_a_failed_study_job_is_reported_with_its_configuration(address, request):
    from edge_digr.ray_jobs import run_jobs

    def study_job(seed, lam):  # nested: Ray ships it by value (this test module is not importable there)
        if lam < 0:
            raise ValueError("negative λ")
        return {"seed": seed, "lam": lam, "score": seed + lam}

    if address:
        request.getfixturevalue("ray_local")
    configs = [{"seed": 0, "lam": 1.0}, {"seed": 1, "lam": -1.0}, {"seed": 2, "lam": 0.5}]
    results, failures = run_jobs(study_job, configs, address, num_cpus=1, progress=False)
    assert [r and r["score"] for r in results] == [1.0, None, 2.5]
    assert len(failures) == 1 and failures[0][0] == {"seed": 1, "lam": -1.0}
    assert "negative λ" in failures[0][1]


def test_without_ray_the_option_is_a_one_line_install_hint(teacher, tmp_path, monkeypatch):
    from edge_digr.ray_jobs import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(UserError, match=r"pip install 'edge-digr\[ray\]'"):
        import_ray()
    path = _teacher_file(teacher, tmp_path)
    result = CliRunner().invoke(main, ["label", "--teacher", str(path), "--frames", "2", "--out",
                                       str(tmp_path / "l.npz"), "--ray", "--quiet"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "edge-digr[ray]" in result.output
    assert not (tmp_path / "l.npz").exists()


# ------------------------------------------------------------------------------------------- --device
def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="--device"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA: --device cuda is valid here")
@pytest.mark.parametrize("command", ["train-teacher", "label", "distill", "evaluate", "attack"])
def test_device_cuda_without_cuda_is_a_one_line_error(command, teacher, tmp_path):
    path = _teacher_file(teacher, tmp_path)
    labels = tmp_path / "labels.npz"
    save_labels(labels, _labels(10))
    args = {"train-teacher": ["--out", str(tmp_path / "t.pt"), "--steps", "1"],
            "label": ["--teacher", str(path), "--frames", "1", "--out", str(tmp_path / "l.npz")],
            "distill": ["--teacher", str(path), "--labels", str(labels), "--out", str(tmp_path / "s.pt")],
            "evaluate": ["--policy", str(path), "--episodes", "1"],
            "attack": ["--policy", str(path), "--eps", "1", "--episodes", "1"]}[command]
    result = subprocess.run([sys.executable, "-m", "edge_digr.cli", command, *args, "--device", "cuda"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: --device cuda: no CUDA device is available to torch here; " \
                                    "use --device cpu or auto"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"))])
def test_distill_on_a_device_saves_cpu_tensors(device, teacher, tmp_path):
    path = _teacher_file(teacher, tmp_path)
    labels = tmp_path / "labels.npz"
    save_labels(labels, _labels(20))
    result = CliRunner().invoke(main, ["distill", "--teacher", str(path), "--labels", str(labels), "--out",
                                       str(tmp_path / "s.pt"), "--epochs", "1", "--dagger-rounds", "0",
                                       "--arch", "edge", "--quiet", "--device", device])
    assert result.exit_code == 0, result.output
    blob = torch.load(tmp_path / "s.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in blob["state_dict"].values())


@pytest.mark.parametrize("command", ["train-teacher", "label", "distill", "evaluate", "attack"])
def test_device_option_is_in_the_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "--device [auto|cpu|cuda]" in result.output


# ------------------------------------------------------------------------------------------- torchrun
def _labels(n, seed=0):
    rng = np.random.default_rng(seed)
    data = {spec.name: (rng.random((n,) + spec.shape) * (255 if spec.name == "obs" else 1)).astype(np.float32)
            for spec in TASK.inputs}
    data["teacher_out"] = rng.normal(size=(n, TASK.action.n)).astype(np.float32)
    data["saliency"] = rng.random((n,) + TASK.obs_shape[1:]).astype(np.float32)
    data["episode"] = (np.arange(n) // 43).astype(np.int32)
    return data


@pytest.mark.parametrize("n, world", [(129, 2), (5, 4), (1, 2), (64, 4)])
def test_ranks_share_each_global_batch_exactly(n, world):
    """Every global batch of one process is split over the ranks: no frame lost, none twice, in the same
    batch, with the global batch each rank weights its share by (also ranks left without frames)."""
    from edge_digr.distributed import Distributed

    order = np.random.default_rng(0).permutation(n)
    ranks = [Distributed(r, world, r).batches(order, 64) for r in range(world)]
    for k, (single, whole) in enumerate(Distributed().batches(order, 64)):
        shares = [rank[k] for rank in ranks]
        np.testing.assert_array_equal(np.sort(np.concatenate([share for share, _ in shares])), np.sort(single))
        np.testing.assert_array_equal(whole, single)
        assert all(np.array_equal(batch, single) for _, batch in shares)


def _distill_args(teacher_path, labels, out, epochs):
    return ["distill", "--teacher", str(teacher_path), "--labels", str(labels), "--out", str(out),
            "--epochs", str(epochs), "--dagger-rounds", "0", "--arch", "edge", "--lam", "1", "--quiet",
            "--device", "cpu"]


def _torchrun(nproc, args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                             "--standalone", "-m", "edge_digr.cli", *args],
                            capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _assert_same_student(a, b):
    sa, sb = load_checkpoint(a)[0].state_dict(), load_checkpoint(b)[0].state_dict()
    for name in sa:
        torch.testing.assert_close(sb[name], sa[name], rtol=0, atol=DDP_ATOL, msg=name)


def test_torchrun_two_processes_follow_one_and_resume(teacher, tmp_path, monkeypatch):
    """150 frames in episodes of 43: 129 train frames after the held-out split, i.e. batches of 64, 64 and
    1, so the last batch leaves rank 1 without frames. Then a 2-process --resume of an interrupted run."""
    path = _teacher_file(teacher, tmp_path)
    labels = tmp_path / "labels.npz"
    save_labels(labels, _labels(150))
    _torchrun(1, _distill_args(path, labels, tmp_path / "one.pt", 2), tmp_path)
    two = _torchrun(2, _distill_args(path, labels, tmp_path / "two.pt", 2), tmp_path)
    assert two.stdout.count("wrote") == 1  # rank 0 alone reports (and writes)
    _assert_same_student(tmp_path / "one.pt", tmp_path / "two.pt")

    # Interrupt a one-process run in its second epoch, then resume it with two processes.
    real_step, calls = torch.optim.Adam.step, []

    def step_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # the first step of epoch 2 (3 batches an epoch)
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_interrupt)
    out = tmp_path / "resumed.pt"
    result = CliRunner().invoke(main, _distill_args(path, labels, out, 2))
    assert result.exit_code != 0 and not out.exists() and Path(f"{out}.resume.pt").exists()
    _torchrun(2, _distill_args(path, labels, out, 2) + ["--resume"], tmp_path)
    assert not Path(f"{out}.resume.pt").exists()
    _assert_same_student(tmp_path / "one.pt", out)


def test_seed_study_on_ray_reports_a_failed_seed_and_keeps_the_others(ray_local, tmp_path, monkeypatch, capsys):
    """Seed 1's demo is already done (its metrics.json is reused); seed 0's output folder is a file, so
    its demo fails at once: the study names it and still prints the table of seed 1. The script runs in
    this process (as __main__, so Ray ships its functions by value) on the module's Ray instance."""
    import json
    import runpy

    row = {"return": 1.0, "success": 1.0, "saliency_pearson": 0.5, "saliency_iou_top10": 0.2, "pointing": 0.3}
    (tmp_path / "seed1").mkdir()
    (tmp_path / "seed1" / "metrics.json").write_text(json.dumps(
        {"teacher": row, "digr": row, "plain": row, "seed": 1,
         "time_ms": {"gradient": 1.0, "perturbation": 100.0, "speedup": 100.0}}))
    (tmp_path / "seed0").write_text("not a folder")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "digr_seeds.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--seeds", "0,1", "--root", str(tmp_path), "--modes",
                                      "digr,plain", "--ray", "--cpus-per-job", "1"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    assert "failed: task minigrid-fetch seed 0 modes digr,plain" in err
    assert "| digr | 1.000 ± 0.000" in out
