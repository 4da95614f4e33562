"""DAgger imitation of a privileged expert: β schedule, dataset growth, resume, and the CLI at a tiny budget."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from edge_digr.checkpoint import load_checkpoint
from edge_digr.core.errors import UserError
from edge_digr.experts import make_expert
from edge_digr.imitation import ImitationConfig, ImitationRun, collect_round, train_imitation
from edge_digr.policies import PixelPolicy, PolicyConfig
from edge_digr.core.tasks import get_task

pytest.importorskip("Box2D", reason="car-racing needs the envs extra (Box2D)")
TASK = get_task("car-racing").with_train(max_episode_steps=6)  # short episodes: several per round
TINY = ImitationConfig(rounds=3, steps_per_round=8, updates_per_round=3, batch_size=4)


def test_round_seeds_never_reach_the_evaluation_seeds():
    from edge_digr.evaluation import EVAL_SEED
    from edge_digr.imitation import round_seed

    used = {round_seed(0, k) + ep for k in range(100) for ep in range(999)}
    assert not used & set(range(EVAL_SEED, EVAL_SEED + 10_000))


def test_the_task_s_budget_splits_over_its_rounds_with_its_learning_rate():
    breakout, car = get_task("atari-breakout").train, get_task("car-racing").train
    cfg = ImitationConfig.for_task(get_task("atari-breakout"))
    assert (cfg.rounds, cfg.steps_per_round * cfg.rounds) == (breakout.imitation_rounds, breakout.teacher_steps)
    assert cfg.lr == breakout.imitation_lr != car.imitation_lr == ImitationConfig.for_task(get_task("car-racing")).lr
    assert ImitationConfig.for_task(get_task("car-racing"), steps=600, rounds=3).steps_per_round == 200


def test_mirrored_half_flips_the_image_and_swaps_left_and_right():
    from edge_digr.imitation import mirrored_half

    obs = torch.arange(64 * 2 * 3, dtype=torch.float32).reshape(64, 1, 2, 3)
    labels = torch.tensor([0, 1, 2, 3] * 16)
    (out,), swapped = mirrored_half((obs,), labels, torch.tensor([0, 1, 3, 2]), np.random.default_rng(0))
    flipped = (out != obs).flatten(1).any(1)
    assert 10 < int(flipped.sum()) < 54  # about half
    assert torch.equal(out[flipped], obs[flipped].flip(-1)) and torch.equal(out[~flipped], obs[~flipped])
    assert torch.equal(swapped[~flipped], labels[~flipped])
    assert torch.equal(swapped[flipped], torch.tensor([0, 1, 3, 2])[labels[flipped]])


def test_beta_halves_each_round_from_the_expert_alone():
    assert [TINY.beta(k) for k in range(3)] == [1.0, 0.5, 0.25]
    with pytest.raises(UserError):
        ImitationConfig(beta0=1.5).validate()


def test_round_zero_is_the_expert_driving_and_every_frame_has_its_label():
    class CountingExpert:
        def __init__(self):
            self.inner, self.calls, self.resets = make_expert("car-racing"), 0, 0

        def reset(self):
            self.resets += 1
            self.inner.reset()

        def act(self, env):
            self.calls += 1
            return self.inner.act(env)

    expert = CountingExpert()
    learner = PixelPolicy(PolicyConfig.for_task(TASK)).eval()
    data = collect_round(TASK, expert, learner, 14, beta=1.0, seed=0, progress=False)
    assert data["obs"].shape == (14, 3, 96, 96) and data["obs"].dtype == np.uint8
    assert data["expert_action"].shape == (14, 3) and expert.calls == 14
    assert expert.resets == 3  # the first episode, and one per finished 6-step episode
    assert list(data["episode"]) == [0] * 6 + [1] * 6 + [2] * 2
    assert len(data["returns"]) == 2


def test_dataset_grows_by_one_round_each_round(tmp_path):
    run = ImitationRun(tmp_path / "teacher.pt", TINY, progress=False)
    train_imitation(TASK, make_expert("car-racing"), run)
    _, config = load_checkpoint(run.out)
    assert config["role"] == "teacher" and config["algorithm"] == "expert-dagger"
    assert [h["frames"] for h in config["history"]] == [8, 16, 24]
    assert [h["beta"] for h in config["history"]] == [1.0, 0.5, 0.25]
    assert sorted(p.name for p in run.work_dir.glob("round_*.npz")) == [f"round_00{k}.npz" for k in range(3)]


def test_resume_after_an_interruption_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    import edge_digr.imitation as imitation

    whole = ImitationRun(tmp_path / "whole" / "teacher.pt", TINY, progress=False)
    expected = train_imitation(TASK, make_expert("car-racing"), whole).state_dict()

    real, calls = imitation.collect_round, []

    def dies_in_round_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    cut = ImitationRun(tmp_path / "cut" / "teacher.pt", TINY, progress=False)
    monkeypatch.setattr(imitation, "collect_round", dies_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        train_imitation(TASK, make_expert("car-racing"), cut)
    assert not cut.out.exists()
    with pytest.raises(UserError, match="--resume"):
        train_imitation(TASK, make_expert("car-racing"), cut)  # a fresh start would discard round 0
    monkeypatch.setattr(imitation, "collect_round", real)
    resumed = train_imitation(TASK, make_expert("car-racing"), cut, resume=True).state_dict()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


def test_resume_can_add_rounds(tmp_path):
    run = ImitationRun(tmp_path / "teacher.pt", TINY, progress=False)
    train_imitation(TASK, make_expert("car-racing"), run)
    longer = ImitationRun(run.out, ImitationConfig(rounds=4, steps_per_round=8, updates_per_round=3, batch_size=4),
                          progress=False)
    train_imitation(TASK, make_expert("car-racing"), longer, resume=True)
    _, config = load_checkpoint(run.out)
    assert [h["frames"] for h in config["history"]] == [8, 16, 24, 32]


def test_resume_refuses_other_options_and_corrupt_state(tmp_path):
    run = ImitationRun(tmp_path / "teacher.pt", TINY, progress=False)
    train_imitation(TASK, make_expert("car-racing"), run)
    other = ImitationRun(run.out, ImitationConfig(rounds=3, steps_per_round=9, updates_per_round=3, batch_size=4),
                         progress=False)
    with pytest.raises(UserError, match="other options"):
        train_imitation(TASK, make_expert("car-racing"), other, resume=True)
    fewer = ImitationRun(run.out, ImitationConfig(rounds=2, steps_per_round=8, updates_per_round=3, batch_size=4),
                         progress=False)
    with pytest.raises(UserError, match="other options"):
        train_imitation(TASK, make_expert("car-racing"), fewer, resume=True)
    run.state_path.write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="unreadable"):
        train_imitation(TASK, make_expert("car-racing"), run, resume=True)


@pytest.mark.parametrize("task", ["car-racing", "atari-breakout"])
def test_train_teacher_expert_at_a_tiny_budget(task, tmp_path):
    out = tmp_path / "teacher.pt"
    result = subprocess.run([sys.executable, "-c", "from edge_digr.cli import main; main()", "train-teacher",
                             "--task", task, "--method", "expert", "--steps", "6", "--rounds", "2",
                             "--updates-per-round", "2", "--out", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    policy, config = load_checkpoint(out)
    assert config["task"] == task and config["frames"] == 6
    assert policy.cfg == PolicyConfig.for_task(get_task(task))


def test_expert_method_refused_for_a_task_without_an_expert(tmp_path):
    result = subprocess.run([sys.executable, "-c", "from edge_digr.cli import main; main()", "train-teacher",
                             "--task", "minigrid-fetch", "--method", "expert", "--out", str(tmp_path / "t.pt")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "has no privileged expert" in result.stderr
    assert "Traceback" not in result.stderr
