"""Observation attacks: ε ball and pixel range, each attack raises the loss it targets, the CLI end to end."""
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from edge_digr.attacks import ATTACKS, AttackConfig, kl_loss, make_attack
from edge_digr.checkpoint import save_checkpoint
from edge_digr.cli import main
from edge_digr.policies import PixelPolicy, PolicyConfig
from edge_digr.core.tasks import get_task


def small_policy(continuous: bool, seed: int = 0) -> PixelPolicy:
    torch.manual_seed(seed)
    cfg = PolicyConfig(obs_shape=(3, 16, 16), n_out=3 if continuous else 5, continuous=continuous,
                       convs=((8, 4, 2, 0), (8, 3, 1, 1)), hidden=(32,),
                       extra_dim=0 if continuous else 4, extra_name="" if continuous else "mission")
    return PixelPolicy(cfg).eval()


def batch(policy: PixelPolicy, n: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (n, 3, 16, 16), generator=g).float()
    obs[:, 0, :4] = 0.0  # saturated regions: the attack must not leave [0, 255] there
    obs[:, 1, :4] = 255.0
    if policy.cfg.extra_dim:
        return obs, torch.eye(policy.cfg.extra_dim)[torch.arange(n) % policy.cfg.extra_dim]
    return (obs,)


def random_corner(obs: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """A random vertex of the ε ball (clipped to the pixel range): the largest random perturbation."""
    g = torch.Generator().manual_seed(seed)
    return (obs + eps * (torch.rand(obs.shape, generator=g) * 2 - 1).sign()).clamp(0, 255)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("eps", [0.0, 2.0, 16.0])
def test_attack_stays_in_eps_ball_and_pixel_range(name, continuous, eps):
    policy = small_policy(continuous)
    inputs = batch(policy)
    adv = make_attack(name, policy, eps, seed=3)(inputs)
    assert adv.shape == inputs[0].shape and adv.dtype == torch.float32
    delta = (adv - inputs[0]).abs()
    assert delta.max() <= eps + 1e-4
    assert adv.min() >= 0.0 and adv.max() <= 255.0
    if eps > 0:  # not a no-op: most pixels move, and some reach the edge of the ball
        assert (delta > 0).float().mean() > 0.3
        assert torch.isclose(delta.max(), torch.tensor(eps))


def test_fgsm_raises_the_cross_entropy_of_the_clean_action():
    policy = small_policy(False)
    inputs = batch(policy)
    attack = make_attack("fgsm", policy, eps=4.0)
    loss = attack.loss_fn(inputs)
    clean, attacked = loss(inputs[0]), loss(attack(inputs))
    assert (attacked > clean).all()
    # ...by far more than a random corner of the same ball does
    assert (attacked - clean).mean() > 5 * (loss(random_corner(inputs[0], 4.0, 0)) - clean).mean().abs()
    # The sign matters: a step *down* the gradient lowers the loss (so the check above can fail).
    obs = inputs[0].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(obs).sum(), obs)
    assert loss((inputs[0] - 4.0 * grad.sign()).clamp(0, 255)).mean() < clean.mean()


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_pgd_raises_the_loss_at_least_as_much_as_fgsm(continuous):
    policy = small_policy(continuous)
    inputs = batch(policy)
    fgsm = make_attack("fgsm", policy, eps=4.0, seed=0)
    pgd = make_attack("pgd", policy, eps=4.0, steps=10, seed=0)
    loss = pgd.loss_fn(inputs)
    clean, by_fgsm, by_pgd = loss(inputs[0]).mean(), loss(fgsm(inputs)).mean(), loss(pgd(inputs)).mean()
    assert by_fgsm > clean
    assert by_pgd >= by_fgsm


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
def test_mad_raises_the_kl_far_beyond_random_perturbations(continuous):
    policy = small_policy(continuous)
    inputs = batch(policy)
    kl = kl_loss(policy, inputs)
    assert kl(inputs[0]).abs().max() < 1e-6  # zero at the clean frame
    by_mad = kl(make_attack("mad", policy, eps=4.0, seed=0)(inputs)).mean()
    # Descending instead of ascending leaves the KL within ~3x of a random vertex; ascending gives ~300x.
    assert by_mad > 20 * kl(random_corner(inputs[0], 4.0, 1)).mean() > 0


def test_continuous_fgsm_beats_its_own_random_start():
    """R+FGSM: the gradient half-step must add loss on top of the random half-step."""
    policy = small_policy(True)
    inputs = batch(policy)
    attack = make_attack("fgsm", policy, eps=8.0, seed=5)
    loss = attack.loss_fn(inputs)
    start = random_corner(inputs[0], 4.0, 5)  # the attack's own random half-step (same seed, same draw)
    attacked = loss(attack(inputs)).mean()
    assert attacked > 20 * loss(start).mean()
    # Near the bowl's bottom any big sign step adds loss; the ascent step must still beat the descent one.
    obs = start.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(obs).sum(), obs)
    assert attacked > loss((start - 4.0 * grad.sign()).clamp(0, 255)).mean()


def test_attacks_are_reproducible_and_leave_extra_inputs_alone():
    policy = small_policy(False)
    inputs = batch(policy)
    mission = inputs[1].clone()
    a = make_attack("pgd", policy, eps=3.0, seed=7)(inputs)
    b = make_attack("pgd", policy, eps=3.0, seed=7)(inputs)
    assert torch.equal(a, b)
    assert torch.equal(inputs[1], mission)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown attack"):
        AttackConfig(name="cw", eps=1.0)
    with pytest.raises(ValueError, match="eps"):
        AttackConfig(name="pgd", eps=-1.0)
    with pytest.raises(ValueError, match="random start"):
        make_attack("pgd", small_policy(True), eps=1.0, random_start=False)


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Random-weight minigrid-fetch policies (edge size): two 'seeds' and a teacher-sized one."""
    root = tmp_path_factory.mktemp("ckpt")
    task = get_task("minigrid-fetch")
    paths = {}
    for name, arch, seed in [("seed0/student_digr", "edge", 0), ("seed1/student_digr", "edge", 1),
                             ("seed0/teacher", "teacher", 2)]:
        torch.manual_seed(seed)
        paths[name] = root / f"{name}.pt"
        save_checkpoint(paths[name], PixelPolicy(PolicyConfig.for_task(task, arch)), "minigrid-fetch", "student")
    return root, paths


def invoke(args):
    return CliRunner().invoke(main, ["attack", *args])


def test_cli_single_attack_writes_json(checkpoints, tmp_path):
    _, paths = checkpoints
    out = tmp_path / "a.json"
    result = invoke(["--policy", str(paths["seed0/teacher"]), "--task", "minigrid-fetch", "--attack", "pgd",
                     "--eps", "4", "--pgd-steps", "2", "--episodes", "2", "--max-steps", "8", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "pgd ε=4" in result.output
    data = json.loads(out.read_text())
    assert data["attacks"] == ["pgd"] and data["eps"] == [4.0]
    (record,) = data["records"]
    assert record["attack"] == "pgd" and record["summary"]["episodes"] == 2
    assert record["summary"]["length"] <= 8


def test_cli_sweep_writes_table_json_and_plot(checkpoints, tmp_path):
    root, paths = checkpoints
    result = invoke(["--compare", f"teacher={paths['seed0/teacher']},{root}/seed*/student_digr.pt",
                     "--task", "minigrid-fetch", "--attack", "fgsm,noise", "--eps", "1,3", "--episodes", "1",
                     "--max-steps", "5", "--workers", "2", "--out-dir", str(tmp_path / "sweep")])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "sweep" / "robustness.md").read_text()
    assert "| teacher | 1 |" in table and "| digr | 2 |" in table  # the glob's two seeds form one row
    assert "**minigrid-fetch, fgsm**" in table and "**minigrid-fetch, noise**" in table
    assert "| clean | ε=1 | ε=3 |" in table
    data = json.loads((tmp_path / "sweep" / "robustness.json").read_text())
    # clean + 2 attacks x 2 ε, per file (3 files)
    assert len(data["records"]) == 3 * (1 + 2 * 2)
    assert set(data["table"]["digr"]["fgsm"]) == {"0", "1", "3"}
    assert data["table"]["digr"]["noise"]["3"]["files"] == 2
    assert (tmp_path / "sweep" / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_merge_of_per_seed_sweeps_equals_one_sweep_over_both(checkpoints, tmp_path):
    root, _ = checkpoints
    common = ["--task", "minigrid-fetch", "--attack", "mad", "--eps", "8", "--pgd-steps", "2", "--episodes", "1",
              "--max-steps", "4"]
    for seed in (0, 1):
        assert invoke(["--compare", f"digr={root}/seed{seed}/student_digr.pt", *common,
                       "--out-dir", str(tmp_path / f"s{seed}")]).exit_code == 0
    both = invoke(["--compare", f"digr={root}/seed*/student_digr.pt", *common, "--out-dir", str(tmp_path / "both")])
    merged = invoke(["--task", "minigrid-fetch", "--out-dir", str(tmp_path / "merged"),
                     "--merge", f"{tmp_path}/s0/robustness.json,{tmp_path}/s1/robustness.json"])
    assert both.exit_code == 0 and merged.exit_code == 0, merged.output
    read = lambda name: json.loads((tmp_path / name / "robustness.json").read_text())  # noqa: E731
    assert read("merged")["table"] == read("both")["table"]
    assert read("merged")["table"]["digr"]["mad"]["8"]["files"] == 2
    # sweeps with different settings are refused
    assert invoke(["--compare", f"digr={root}/seed0/student_digr.pt", *common[:-2], "--max-steps", "3",
                   "--out-dir", str(tmp_path / "other")]).exit_code == 0
    refused = invoke(["--task", "minigrid-fetch", "--out-dir", str(tmp_path / "bad"),
                      "--merge", f"{tmp_path}/s0/robustness.json,{tmp_path}/other/robustness.json"])
    assert refused.exit_code == 2 and "differs" in refused.output and "max_steps" in refused.output


@pytest.mark.parametrize("extra, message", [
    (["--compare", "x.pt"], "exactly one of --policy"),
    (["--merge", "x.json"], "exactly one of --policy"),
    (["--attack", "cw"], "unknown attack cw"),
    (["--eps", "-1"], "values >= 0"),
])
def test_cli_user_errors(checkpoints, extra, message):
    _, paths = checkpoints
    args = {"--policy": str(paths["seed0/teacher"]), "--task": "minigrid-fetch", "--eps": "1"}
    flat = [x for kv in args.items() for x in kv] + extra
    result = invoke(flat)
    assert result.exit_code == 2 and message in result.output, result.output


def test_cli_reads_the_task_from_the_policy(checkpoints):
    _, paths = checkpoints
    result = invoke(["--policy", str(paths["seed0/teacher"]), "--attack", "fgsm", "--eps", "1", "--episodes", "1",
                     "--max-steps", "4"])
    assert result.exit_code == 0, result.output
    assert "minigrid-fetch fgsm ε=1: return" in result.output


def test_cli_refuses_wrong_task_and_exported_graphs(checkpoints, tmp_path):
    _, paths = checkpoints
    result = invoke(["--policy", str(paths["seed0/teacher"]), "--task", "atari-breakout", "--eps", "1"])
    assert result.exit_code == 2 and "trained on 'minigrid-fetch'" in result.output
    result = invoke(["--policy", str(tmp_path / "s.onnx"), "--task", "minigrid-fetch", "--eps", "1"])
    assert result.exit_code == 2 and "white-box attacks need the torch policy" in result.output


def test_attack_help():
    result = CliRunner().invoke(main, ["attack", "--help"])
    assert result.exit_code == 0 and "--compare" in result.output and "--eps" in result.output


def test_command_module_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import edge_digr.attack_commands"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_cli_attack_names_match_the_attacks_module():
    from edge_digr.robustness import ATTACK_NAMES

    assert ATTACK_NAMES == ATTACKS
