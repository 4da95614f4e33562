"""Mirrored training frames: rows flip, actions swap, and distillation mirrors frame, target and map together."""
import numpy as np
import pytest
import torch

from edge_digr.distill import DistillConfig, distill, selection_mask
from edge_digr.mirror import flip_rows, mirrored_actions, mirrored_logits
from edge_digr.core.tasks import get_task


def test_flip_rows_mirrors_only_the_chosen_rows():
    x = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(3, 2, 4)
    out = flip_rows(x, torch.tensor([True, False, True]))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1]) and torch.equal(out[2], x[2].flip(-1))


def test_mirrored_logits_give_each_action_the_score_of_its_mirror_image():
    logits = torch.tensor([[10.0, 11.0, 12.0, 13.0]])
    assert mirrored_logits(logits, mirrored_actions((0, 1, 3, 2))).tolist() == [[10.0, 11.0, 13.0, 12.0]]
    # Not an involution: action a becomes mirror[a], so mirror[a]'s new score is a's old one.
    cycle = mirrored_actions((1, 2, 0))
    assert mirrored_logits(torch.tensor([[1.0, 2.0, 3.0]]), cycle).tolist() == [[3.0, 1.0, 2.0]]
    with pytest.raises(ValueError, match="permutation"):
        mirrored_actions((0, 0, 1))


def _symmetric_labels(task, n=16):
    rng = np.random.default_rng(0)
    data = {spec.name: np.zeros((n,) + spec.shape, np.float32) for spec in task.inputs}
    data["obs"][:] = 128.0  # a frame that is its own mirror image
    data["teacher_out"] = np.tile(np.array([2.0, -2.0, 0.0, 0.0], np.float32), (n, 1))  # left over right
    data["saliency"] = rng.random((n,) + task.obs_shape[1:]).astype(np.float32)
    return data


@pytest.mark.parametrize("mirror", [True, False])
def test_distillation_on_mirrored_frames_learns_the_symmetric_policy(tmp_path, mirror):
    """On a frame that is its own mirror image, a teacher that prefers left is, mirrored, one that prefers
    right: the student trained on both halves rates the two alike; without mirroring it copies the teacher."""
    task = get_task("minigrid-fetch").with_train(mirror_actions=(1, 0, 2, 3))  # left <-> right
    cfg = DistillConfig(mode="plain", epochs=30, batch_size=16, lr=1e-2, arch="edge", mirror=mirror)
    student = distill(task, _symmetric_labels(task), cfg, tmp_path / "s.pt", progress=False)
    data = _symmetric_labels(task, 1)
    with torch.no_grad():
        logp = torch.log_softmax(student(*student.inputs_from(data)), -1)[0]
    gap = float(logp[0] - logp[1])
    assert (abs(gap) < 0.5) if mirror else (gap > 3.0)


def test_the_penalty_region_is_mirrored_with_its_frame(tmp_path, monkeypatch):
    """The teacher's map of a mirrored frame is its mirror image: the region the penalty sees must match
    the frame the student sees, row by row, also where only some frames have a map."""
    import edge_digr.distill as distill_module

    task = get_task("minigrid-fetch").with_train(mirror_actions=(1, 0, 2, 3))
    rng = np.random.default_rng(1)
    n = 16
    data = {spec.name: rng.random((n,) + spec.shape).astype(np.float32) for spec in task.inputs}
    data["obs"] = np.floor(data["obs"] * 255)
    data["mapped"] = np.arange(n) % 3 != 1  # as labels with maps on some frames: a zero map on the others
    data["saliency"] = np.where(data["mapped"][:, None, None], data["obs"][:, 0] / 255.0, 0.0)  # f(its frame)
    data["teacher_out"] = rng.normal(size=(n, task.action.n)).astype(np.float32)
    seen = []

    def record(student, inputs, region, norm="none"):
        seen.append((inputs[0].detach().clone(), region.clone()))
        return (student(*inputs).sum() * 0.0)

    monkeypatch.setattr(distill_module, "gradient_penalty", record)
    cfg = DistillConfig(mode="digr", lam=1.0, epochs=2, batch_size=8, arch="edge")
    distill(task, data, cfg, tmp_path / "s.pt", progress=False)
    flipped = 0
    for frames, region in seen:
        expected = selection_mask((frames[:, 0] / 255.0).numpy(), cfg.mask_rule, cfg.mask_threshold)
        assert np.array_equal(region.numpy(), expected)
        flipped += int(sum(not any(np.array_equal(f, o) for o in data["obs"]) for f in frames.numpy()))
    assert 0 < flipped < sum(len(frames) for frames, _ in seen)  # some frames were mirrored, not all
