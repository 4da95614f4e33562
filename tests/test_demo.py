"""The demo and every pipeline stage at a tiny budget, through the CLI, for the three offline tasks."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edge_digr.cli import main

ACCEPTANCE_KEYS = ["teacher.return", "teacher.success", "digr.return", "digr.success", "plain.return",
                   "digr.saliency_pearson", "plain.saliency_pearson", "digr.pointing", "plain.pointing",
                   "time_ms.perturbation", "time_ms.gradient"]


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_minigrid_demo_writes_report_metrics_and_students(tmp_path):
    out = tmp_path / "demo"
    invoke("demo", "--budget", "tiny", "--out-dir", out, "--quiet")
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ACCEPTANCE_KEYS:
        node = metrics
        for part in key.split("."):
            node = node[part]
        assert isinstance(node, float) and np.isfinite(node), key
    assert 0.0 <= metrics["digr"]["pointing"] <= 1.0
    assert metrics["time_ms"]["perturbation"] > 0 and metrics["time_ms"]["gradient"] > 0
    for name in ("student_digr.pt", "student_plain.pt", "teacher.pt", "labels.npz", "report.md"):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    strips = sorted(out.glob("strip_*.png"))
    assert strips and all(s.name in report for s in strips)
    from PIL import Image

    from edge_digr.demo import LEGEND_HEIGHT
    with Image.open(strips[0]) as img:
        panel = img.height - 14 - LEGEND_HEIGHT  # four square panels between a title row and a legend
        assert img.width == 4 * panel and panel >= 160

    # A re-run keeps the students already there and evaluates them beside the one it makes again.
    kept = (out / "student_digr.pt").read_bytes()
    (out / "student_plain.pt").unlink()
    invoke("demo", "--budget", "tiny", "--out-dir", out, "--quiet")
    again = json.loads((out / "metrics.json").read_text())
    assert (out / "student_digr.pt").read_bytes() == kept and (out / "student_plain.pt").exists()
    assert again["digr"] == metrics["digr"] and {"teacher", "digr", "plain"} <= set(again)


@pytest.mark.parametrize("task", ["atari-breakout", "car-racing"])
def test_every_stage_at_a_tiny_budget(task, tmp_path):
    out = tmp_path / task
    invoke("demo", "--task", task, "--budget", "tiny", "--out-dir", out, "--quiet")
    student = out / "student_digr.pt"
    onnx_path = tmp_path / "student.onnx"
    invoke("export", student, "--out", onnx_path)
    invoke("check", onnx_path)
    metrics_path = tmp_path / "onnx_metrics.json"
    invoke("evaluate", "--policy", onnx_path, "--task", task, "--episodes", "1", "--labels", out / "labels.npz",
           "--json", metrics_path, "--quiet")
    metrics = json.loads(metrics_path.read_text())
    assert metrics["episodes"] == 1 and np.isfinite(metrics["saliency_pearson"])
    video = tmp_path / "run.gif"
    invoke("run", "--engine", onnx_path, "--max-steps", "6", "--record", video)
    assert video.stat().st_size > 0


def test_teacher_resumes_from_its_checkpoint_with_the_threads_asked_for(tmp_path):
    import torch

    before = torch.get_num_threads()
    out = tmp_path / "teacher.pt"
    try:
        invoke("train-teacher", "--steps", "256", "--n-envs", "2", "--out", out, "--quiet")
        assert json.loads(out.with_suffix(".progress.json").read_text())["steps"] == 256
        first = torch.load(out, weights_only=True)["state_dict"]
        # Resuming a finished run reloads the SB3 weights and trains nothing: the same teacher comes out.
        invoke("train-teacher", "--steps", "256", "--n-envs", "2", "--out", out, "--resume", "--quiet")
        again = torch.load(out, weights_only=True)["state_dict"]
        assert all(torch.equal(first[k], again[k]) for k in first)
        invoke("train-teacher", "--steps", "512", "--n-envs", "2", "--out", out, "--resume", "--threads", "2",
               "--quiet")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert json.loads(out.with_suffix(".progress.json").read_text())["steps"] == 512
    result = CliRunner().invoke(main, ["train-teacher", "--steps", "512", "--out", str(tmp_path / "new.pt"),
                                       "--resume"])
    assert result.exit_code != 0 and "nothing to resume" in result.output


def test_the_demo_uses_the_shipped_teacher_unless_told_otherwise(tmp_path):
    from edge_digr.core.errors import UserError
    from edge_digr.core.tasks import get_task
    from edge_digr.demo import choose_teacher

    models, out = tmp_path / "models", tmp_path / "out"
    fetch, breakout = get_task("minigrid-fetch"), get_task("atari-breakout")
    (models / fetch.name).mkdir(parents=True)
    (models / fetch.name / "teacher.pt").write_bytes(b"")
    assert choose_teacher(fetch, out, "full", models=models) == (models / fetch.name / "teacher.pt", False)
    assert choose_teacher(fetch, out, "full", train_teacher=True, models=models) == (out / "teacher.pt", True)
    assert choose_teacher(fetch, out, "tiny", models=models) == (out / "teacher.pt", True)
    given = tmp_path / "mine.pt"
    assert choose_teacher(fetch, out, "full", teacher=given, models=models) == (given, False)
    with pytest.raises(UserError, match="either --teacher PATH or --train-teacher"):
        choose_teacher(fetch, out, "full", teacher=given, train_teacher=True, models=models)
    # A PPO task that ships no teacher trains one (minutes); an expert task asks for one (hours).
    assert choose_teacher(fetch, out, "full", models=tmp_path / "none") == (out / "teacher.pt", True)
    with pytest.raises(UserError, match="no shipped teacher for atari-breakout"):
        choose_teacher(breakout, out, "full", models=models)


def test_evenness_is_unit_free_and_one_for_an_even_map():
    from edge_digr.demo import evenness

    np.testing.assert_allclose(evenness(np.full((4, 5), 7.0)), np.ones((4, 5)))
    spiky = np.zeros((4, 5))
    spiky[1, 2] = 3.0
    np.testing.assert_allclose(evenness(spiky), evenness(1000 * spiky))
    assert evenness(spiky)[1, 2] == 20  # the whole map in one of 20 pixels
    assert not evenness(np.zeros((2, 2))).any()


def test_evaluation_shares_merge_to_the_whole_evaluation(tmp_path):
    """The demo runs a policy's evaluation episodes in shares on every core; merged, they are one evaluation."""
    import torch

    from edge_digr.checkpoint import save_checkpoint
    from edge_digr.core.tasks import get_task
    from edge_digr.demo import merged, shares
    from edge_digr.metrics import evaluate_policy, open_policy, play
    from edge_digr.policies import PixelPolicy, PolicyConfig

    for episodes, parts in ((1, 2), (2, 2), (7, 2), (7, 3), (2, 3)):
        split = shares(episodes, parts)
        assert split[0][0] == 0 and all(n > 0 for _, n in split) and len(split) == min(episodes, parts)
        assert sum(n for _, n in split) == episodes
        assert all(a + n == b for (a, n), (b, _) in zip(split, split[1:]))  # consecutive, no gap or overlap
    task = get_task("minigrid-fetch").with_train(max_episode_steps=8)
    torch.manual_seed(0)
    path = tmp_path / "policy.pt"
    save_checkpoint(path, PixelPolicy(PolicyConfig.for_task(task, "edge")), task.name, "student")
    handle = open_policy(str(path), task)
    whole = evaluate_policy(handle, task, 5, seed=1, progress=False)
    parts = [(play(handle, task, n, 1, first), {"saliency_pearson": 0.5} if first == 0 else {})
             for first, n in shares(5, 3)]
    assert merged(parts) == {**whole, "saliency_pearson": 0.5}
