"""Checkpoints round-trip with weights_only=True; SB3 archives are read from policy.pth only."""
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from edge_digr.checkpoint import load_checkpoint, load_policy, save_checkpoint
from edge_digr.core.errors import UserError
from edge_digr.policies import PixelPolicy, PolicyConfig
from edge_digr.core.tasks import get_task


def test_round_trip_preserves_outputs_and_config(tmp_path):
    task = get_task("minigrid-fetch")
    policy = PixelPolicy(PolicyConfig.for_task(task, "edge")).eval()
    path = tmp_path / "p.pt"
    save_checkpoint(path, policy, task.name, "student", distill={"mode": "digr", "lam": 1.0})
    raw = torch.load(path, weights_only=True)  # the format itself is weights_only-safe
    assert raw["format"] == "edge-digr/policy@1"
    loaded, config = load_checkpoint(path)
    assert config["task"] == task.name and config["distill"]["mode"] == "digr"
    obs, mission = torch.rand(2, *task.obs_shape) * 255, torch.eye(8)[:2]
    torch.testing.assert_close(loaded(obs, mission), policy(obs, mission))


def test_checkpoint_info_must_be_json(tmp_path):
    task = get_task("atari-breakout")
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "p.pt", PixelPolicy(PolicyConfig.for_task(task, "edge")), task.name, "x",
                        bad=object())
    assert not any(tmp_path.iterdir())  # nothing half-written left behind


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "edge-digr/policy@1", "config": _Evil(), "state_dict": {}}, path)
    with pytest.raises(UserError, match="not a readable weights file"):
        load_checkpoint(path)


def test_truncated_and_foreign_files_are_user_errors(tmp_path):
    task = get_task("atari-breakout")
    good = tmp_path / "good.pt"
    save_checkpoint(good, PixelPolicy(PolicyConfig.for_task(task, "edge")), task.name, "student")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UserError):
        load_checkpoint(cut)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(UserError, match="not an edge-digr checkpoint"):
        load_checkpoint(other)
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_reads_an_edge_digr_sb3_teacher_zip(tmp_path):
    from edge_digr.teacher import build_ppo, make_vec_env

    task = get_task("minigrid-fetch")
    env = make_vec_env(task, 1, seed=0, subprocess=False)
    model = build_ppo(task, env, seed=0)
    model.save(tmp_path / "teacher.zip")
    policy = load_policy(tmp_path / "teacher.zip", task=task.name)
    obs = env.reset()
    with torch.no_grad():
        sb3_logits = model.policy.get_distribution(model.policy.obs_to_tensor(obs)[0]).distribution.logits
        ours = torch.log_softmax(policy(torch.as_tensor(obs["obs"]), torch.as_tensor(obs["mission"])), -1)
    torch.testing.assert_close(ours, sb3_logits, rtol=1e-5, atol=1e-5)
    env.close()


def test_reads_a_nature_cnn_sb3_zip_trained_elsewhere(tmp_path):
    import gymnasium as gym
    from stable_baselines3 import PPO

    task = get_task("atari-breakout")
    env = gym.make("CartPole-v1")  # only the spaces matter: a (4, 84, 84) uint8 image, 4 actions
    env.observation_space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    env.action_space = gym.spaces.Discrete(4)
    model = PPO("CnnPolicy", env, n_steps=8, device="cpu")
    model.save(tmp_path / "breakout.zip")
    with zipfile.ZipFile(tmp_path / "breakout.zip") as z:
        assert "data" in z.namelist()  # the pickled part exists and is ignored
    policy = load_policy(tmp_path / "breakout.zip", task=task.name)
    obs = np.random.default_rng(0).integers(0, 256, (2, 4, 84, 84)).astype(np.uint8)
    with torch.no_grad():
        sb3_logits = model.policy.get_distribution(model.policy.obs_to_tensor(obs)[0]).distribution.logits
        ours = torch.log_softmax(policy(torch.as_tensor(obs, dtype=torch.float32)), -1)
    torch.testing.assert_close(ours, sb3_logits, rtol=1e-5, atol=1e-5)


def test_sb3_zip_with_pickled_weights_is_refused(tmp_path):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("policy.pth", pickle.dumps(_Evil()))
    with pytest.raises(UserError, match="not a readable weights file"):
        load_policy(path, task="atari-breakout")
    with pytest.raises(UserError, match="say which task"):
        load_policy(path)
