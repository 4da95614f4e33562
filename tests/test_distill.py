"""The DIGR regulariser: its gradient reaches the weights, the selection mask selects; distillation resumes."""
import numpy as np
import pytest
import torch

from edge_digr.distill import (DistillConfig, distill, distillation_loss, gradient_penalty, selection_mask)
from edge_digr.core.errors import UserError
from edge_digr.policies import PixelPolicy, PolicyConfig
from edge_digr.saliency import input_gradient
from edge_digr.core.tasks import get_task


def _policy(continuous=False):
    torch.manual_seed(1)
    return PixelPolicy(PolicyConfig(obs_shape=(2, 9, 9), n_out=3, continuous=continuous,
                                    convs=((4, 3, 2, 0),), hidden=(8,)))


def test_selection_mask_fraction_rule_marks_pixels_below_the_threshold():
    maps = np.array([[[0.0, 0.05, 0.2], [1.0, 0.09, 0.1]]], np.float32)
    a = selection_mask(maps, "fraction", 0.1)
    np.testing.assert_array_equal(a, [[[1, 1, 0], [0, 1, 0]]])


def test_selection_mask_topk_rule_keeps_the_top_share_salient():
    maps = np.arange(10, dtype=np.float32).reshape(1, 2, 5)
    a = selection_mask(maps, "topk", 0.2)  # top 2 of 10 pixels are salient
    assert a.sum() == 8 and a[0, 1, 3] == 0 and a[0, 1, 4] == 0


def test_share_penalty_is_the_gradient_energy_share_in_the_region_and_ignores_scale():
    policy = _policy()
    obs = torch.rand(2, 2, 9, 9) * 255
    sq = (input_gradient(policy, (obs,)) * 255.0).pow(2).sum(-3)
    region = torch.zeros(2, 9, 9)
    region[:, :4] = 1.0
    share = ((sq * region).flatten(1).sum(1) / sq.flatten(1).sum(1)).mean()
    got = gradient_penalty(policy, (obs,), region, norm="share")
    assert 0.0 < got.item() < 1.0 and got.item() == pytest.approx(share.item(), rel=1e-5)
    # Scaling a continuous head by 3 scales the action mean's gradient by 3: its share stays, its size grows 9×.
    steer = _policy(continuous=True)
    share_before = gradient_penalty(steer, (obs,), region, norm="share").item()
    size_before = gradient_penalty(steer, (obs,), region).item()
    with torch.no_grad():
        steer.head.weight.mul_(3.0)
        steer.head.bias.mul_(3.0)
    assert gradient_penalty(steer, (obs,), region, norm="share").item() == pytest.approx(share_before, rel=1e-4)
    assert gradient_penalty(steer, (obs,), region).item() == pytest.approx(9 * size_before, rel=1e-4)
    with pytest.raises(UserError, match="mask-rule"):
        DistillConfig(mask_rule="soft").validate()  # removed: it lost on minigrid-fetch and car-racing


@pytest.mark.parametrize("continuous", [False, True])
def test_penalty_counts_only_selected_pixels(continuous):
    policy = _policy(continuous)
    obs = torch.rand(2, 2, 9, 9) * 255
    grad = input_gradient(policy, (obs,)) * 255.0
    region = torch.zeros(2, 9, 9)
    assert gradient_penalty(policy, (obs,), region).item() == 0.0
    region[0, 4, 5] = 1.0
    expected = grad.pow(2).sum(-3)
    expected = (expected.sum(1) if continuous else expected)[0, 4, 5] / 2  # mean over the 2 frames
    assert gradient_penalty(policy, (obs,), region).item() == pytest.approx(expected.item(), rel=1e-5)


def test_penalty_gradient_reaches_the_weights_and_lowers_the_penalty():
    policy = _policy()
    obs = torch.rand(8, 2, 9, 9) * 255
    region = torch.ones(8, 9, 9)
    before = gradient_penalty(policy, (obs,), region)
    before.backward()
    grads = [p.grad for p in policy.parameters()]
    assert grads[0] is not None and grads[0].abs().sum() > 0  # first conv's weight
    with torch.no_grad():
        for p in policy.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad / (p.grad.norm() + 1e-12)
    assert gradient_penalty(policy, (obs,), region).item() < before.item()


def test_distillation_loss_is_zero_for_identical_outputs_and_temperature_scaled():
    z = torch.randn(4, 5)
    assert distillation_loss(z, z, False, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(z, z + 1.0, True, 1.0).item() == pytest.approx(1.0)


def _labels(task, n=12, seed=0):
    rng = np.random.default_rng(seed)
    data = {spec.name: (rng.random((n,) + spec.shape) * (255 if spec.name == "obs" else 1)).astype(np.float32)
            for spec in task.inputs}
    data["teacher_out"] = rng.normal(size=(n, task.action.n)).astype(np.float32)
    data["saliency"] = rng.random((n,) + task.obs_shape[1:]).astype(np.float32)
    data["episode"] = np.repeat(np.arange(3), n // 3).astype(np.int32)
    return data


def test_interrupted_distillation_resumes_to_the_same_weights(tmp_path, monkeypatch):
    task = get_task("minigrid-fetch")
    data = _labels(task)
    cfg = DistillConfig(mode="digr", lam=1.0, epochs=2, batch_size=4, arch="edge")
    full = distill(task, data, cfg, tmp_path / "full.pt", progress=False)
    assert not (tmp_path / "full.pt.resume.pt").exists()  # removed once a run completes

    real_step, calls = torch.optim.Adam.step, []

    def step_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # first step of epoch 2 (12 frames, batches of 4)
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_interrupt)
    out = tmp_path / "student.pt"
    with pytest.raises(KeyboardInterrupt):
        distill(task, data, cfg, out, progress=False)
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    assert not out.exists() and (tmp_path / "student.pt.resume.pt").exists()
    resumed = distill(task, data, cfg, out, resume=True, progress=False)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)

    with pytest.raises(UserError, match="nothing to resume"):
        distill(task, data, cfg, tmp_path / "other.pt", resume=True, progress=False)


def test_distill_rejects_bad_options():
    with pytest.raises(UserError, match="--mask-threshold"):
        DistillConfig(mask_threshold=1.5).validate()
    with pytest.raises(UserError, match="--mode"):
        DistillConfig(mode="magic").validate()


def test_dagger_rounds_add_student_frames_labelled_by_the_teacher(tmp_path):
    from edge_digr.checkpoint import load_checkpoint
    from edge_digr.distill import dagger_epochs

    assert dagger_epochs(30, 2) == [10, 20] and dagger_epochs(4, 1) == [2]
    task = get_task("minigrid-fetch")
    torch.manual_seed(0)
    teacher = PixelPolicy(PolicyConfig.for_task(task, "edge")).eval()
    cfg = DistillConfig(mode="digr", lam=1.0, epochs=2, batch_size=8, arch="edge", dagger_rounds=1, dagger_frames=5)
    distill(task, _labels(task), cfg, tmp_path / "s.pt", progress=False, teacher=teacher)
    _, config = load_checkpoint(tmp_path / "s.pt")
    assert config["frames"] == {"labels": 12, "dagger": 5, "maps": 17}
    cfg = DistillConfig(mode="digr", lam=1.0, epochs=2, batch_size=8, arch="edge", dagger_rounds=1, dagger_frames=5,
                        dagger_maps=2)
    distill(task, _labels(task), cfg, tmp_path / "m.pt", progress=False, teacher=teacher)
    assert load_checkpoint(tmp_path / "m.pt")[1]["frames"] == {"labels": 12, "dagger": 5, "maps": 14}
    plain = DistillConfig(mode="plain", epochs=2, batch_size=8, arch="edge", dagger_rounds=1, dagger_frames=5)
    distill(task, _labels(task), plain, tmp_path / "p.pt", progress=False, teacher=teacher)
    assert load_checkpoint(tmp_path / "p.pt")[1]["frames"] == {"labels": 12, "dagger": 5, "maps": 12}  # none needed
    with pytest.raises(UserError, match="--dagger-maps"):
        DistillConfig(dagger_frames=5, dagger_maps=6).validate()
    with pytest.raises(UserError, match="need the teacher"):
        distill(task, _labels(task), cfg, tmp_path / "t.pt", progress=False)


def test_the_penalty_reaches_only_frames_with_a_teacher_map(tmp_path):
    """Frames without a map serve the action term only: with no map at all DIGR is plain distillation, to
    the bit; with maps on some frames it is not."""
    task = get_task("minigrid-fetch")
    data = _labels(task)
    weights = {}
    for name, mapped in {"none": np.zeros(12, bool), "some": np.arange(12) % 4 == 0}.items():
        cfg = DistillConfig(mode="digr", lam=10.0, epochs=2, batch_size=4, arch="edge")
        student = distill(task, {**data, "mapped": mapped}, cfg, tmp_path / f"{name}.pt", progress=False)
        weights[name] = student.state_dict()
    plain = distill(task, data, DistillConfig(mode="plain", epochs=2, batch_size=4, arch="edge"),
                    tmp_path / "plain.pt", progress=False).state_dict()
    assert all(torch.equal(plain[k], weights["none"][k]) for k in plain)
    assert not all(torch.equal(plain[k], weights["some"][k]) for k in plain)


def test_each_mode_gets_its_task_lambda_and_igr_keeps_the_raw_penalty(tmp_path, monkeypatch):
    """DIGR's default is the share-normalised penalty; igr's region is every pixel, where the share is 1 whatever
    the gradient (no penalty at all), so igr penalises the raw energy."""
    import edge_digr.distill as distill_module

    task = get_task("minigrid-fetch")  # its digr and igr λ differ (car-racing's are both 0.03)
    digr, igr = DistillConfig.for_task(task, "digr"), DistillConfig.for_task(task, "igr")
    assert (digr.lam, digr.penalty_norm) == (task.train.digr_lambda, "share")
    assert igr.lam == task.train.igr_lambda != digr.lam
    assert DistillConfig.for_task(task, "digr", lam=2.0).lam == 2.0
    plain = DistillConfig.for_task(task, "plain")
    assert (plain.lam, plain.penalty_norm, igr.penalty_norm) == (0.0, "none", "none")  # what each really trains with

    torch.manual_seed(0)
    student = PixelPolicy(PolicyConfig.for_task(get_task("minigrid-fetch"), "edge"))
    inputs = tuple(torch.rand((3,) + spec.shape) * 255 for spec in get_task("minigrid-fetch").inputs)
    everywhere = torch.ones((3, 40, 40))
    assert gradient_penalty(student, inputs, everywhere, norm="share").item() == pytest.approx(1.0)

    norms = []
    real = distill_module.gradient_penalty
    monkeypatch.setattr(distill_module, "gradient_penalty",
                        lambda *args: norms.append(args[-1]) or real(*args))
    minigrid = get_task("minigrid-fetch")
    for mode in ("igr", "digr"):
        distill(minigrid, _labels(minigrid), DistillConfig(mode=mode, epochs=1, batch_size=12, arch="edge"),
                tmp_path / f"{mode}.pt", progress=False)
    assert norms == ["none", "share"]


def test_training_arrays_keep_whole_pixel_values_as_uint8():
    from edge_digr.distill import training_arrays

    task = get_task("minigrid-fetch")
    data = _labels(task)
    names = [spec.name for spec in task.inputs]
    assert training_arrays(data, names)["obs"].dtype == np.float32  # fractional values stay as they are
    whole = {**data, "obs": np.floor(data["obs"])}
    arrays = training_arrays(whole, names)
    assert arrays["obs"].dtype == np.uint8 and np.array_equal(arrays["obs"], whole["obs"])
    assert arrays["mapped"].dtype == bool and arrays["mapped"].all()  # labels without `mapped`: all have maps


def test_training_arrays_keep_the_maps_of_mapped_frames_only():
    from edge_digr.distill import map_rows, training_arrays

    task = get_task("minigrid-fetch")
    mapped = np.arange(12) % 4 == 1
    data = _labels(task)
    data["saliency"][~mapped] = 0.0  # what labels hold where no map was made
    arrays = training_arrays({**data, "mapped": mapped}, [spec.name for spec in task.inputs])
    assert arrays["saliency"].shape == (3,) + task.obs_shape[1:]
    rows = map_rows(mapped)
    assert rows.tolist() == [-1, 0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1]
    np.testing.assert_array_equal(arrays["saliency"][rows[mapped]], data["saliency"][mapped])


def _teacher_with_dead_units(task, dead):
    """The task's teacher architecture, random weights, with the hidden units in `dead` never firing."""
    torch.manual_seed(2)
    teacher = PixelPolicy(PolicyConfig.for_task(task, "teacher")).eval()
    hidden = teacher.trunk.weight_layers()[len(teacher.cfg.convs)]
    with torch.no_grad():
        hidden.weight[dead] = 0.0
        hidden.bias[dead] = -1.0  # ReLU(-1) = 0 on every input
    return teacher


def test_a_student_started_from_the_teacher_copies_it_and_drops_only_silent_units():
    from dataclasses import replace
    from edge_digr.policies import start_from_teacher

    task = get_task("minigrid-fetch")  # convs, a mission gate and one hidden layer: every part that is copied
    width = task.teacher_arch.hidden[0]
    teacher = _teacher_with_dead_units(task, list(range(0, width, 2)))  # half the units never fire
    inputs = teacher.inputs_from(_labels(task, n=16))
    with torch.no_grad():
        expected = teacher(*inputs)
    same = PixelPolicy(teacher.cfg)
    start_from_teacher(same, teacher, inputs)
    narrow = PixelPolicy(replace(teacher.cfg, hidden=(width // 2,)))
    start_from_teacher(narrow, teacher, inputs)
    with torch.no_grad():
        torch.testing.assert_close(same(*inputs), expected, rtol=0, atol=0)
        torch.testing.assert_close(narrow(*inputs), expected, rtol=1e-5, atol=1e-5)  # the live half, all of it
        # Narrower than the live units: the least used go, their mean folded into the bias; close, not equal.
        narrower = PixelPolicy(replace(teacher.cfg, hidden=(width // 4,)))
        start_from_teacher(narrower, teacher, inputs)
        assert not torch.allclose(narrower(*inputs), expected, atol=1e-5)
    with pytest.raises(UserError, match="--init teacher needs a student with the teacher's convs"):
        start_from_teacher(PixelPolicy(PolicyConfig.for_task(task, "edge")), teacher, inputs)
    with pytest.raises(UserError, match="no wider"):
        start_from_teacher(PixelPolicy(replace(teacher.cfg, hidden=(width * 2,))), teacher, inputs)


def test_distill_init_teacher_starts_at_the_teacher_and_needs_one(tmp_path):
    task = get_task("minigrid-fetch")
    teacher = _teacher_with_dead_units(task, [0, 1, 2])
    labels = _labels(task)
    # lr so small that the run keeps the start: the student is then the teacher, to float precision.
    cfg = DistillConfig(mode="plain", epochs=1, batch_size=8, arch="teacher", init="teacher", lr=1e-12)
    student = distill(task, labels, cfg, tmp_path / "s.pt", progress=False, teacher=teacher)
    inputs = teacher.inputs_from(labels)
    with torch.no_grad():
        torch.testing.assert_close(student(*inputs), teacher(*inputs), rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="--init teacher needs the teacher"):
        distill(task, labels, cfg, tmp_path / "t.pt", progress=False)
    with pytest.raises(UserError, match="--init must be one of"):
        DistillConfig(init="imagenet").validate()
    with pytest.raises(UserError, match="--lr"):
        DistillConfig(lr=0.0).validate()
