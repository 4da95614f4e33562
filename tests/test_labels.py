"""Labels with maps on some frames only: which frames, the same maps as labelling all, and the metrics and
pictures reading only the frames that have one."""
import numpy as np
import torch
from click.testing import CliRunner

from edge_digr.checkpoint import save_checkpoint
from edge_digr.cli import main
from edge_digr.core.perturbation import PerturbationConfig
from edge_digr.core.tasks import get_task
from edge_digr.labels import add_perturbation_maps, collect, explore, mapped_frames, mapped_only
from edge_digr.policies import PixelPolicy, PolicyConfig

TASK = get_task("minigrid-fetch")
CONFIG = PerturbationConfig(stride=8)  # 25 masks a 40x40 frame: quick, every code path the same


def test_rollouts_sample_or_act_epsilon_greedily():
    logits = np.log(np.array([0.1, 0.2, 0.7]))
    rng = np.random.default_rng(0)
    sampled = np.bincount([explore(logits, None, rng) for _ in range(4000)], minlength=3) / 4000
    assert np.allclose(sampled, [0.1, 0.2, 0.7], atol=0.03)
    assert {explore(logits, 0.0, rng) for _ in range(200)} == {2}  # ε 0: the greedy action every step
    chosen = np.array([explore(logits, 0.3, rng) for _ in range(4000)])
    # ε of the steps draw uniformly, so the others show up at ε/3 each and the greedy one at 1 − 2ε/3
    assert np.allclose(np.bincount(chosen, minlength=3) / 4000, [0.1, 0.1, 0.8], atol=0.03)


def test_mapped_frames_are_spread_evenly_over_the_rollout():
    assert mapped_frames(10, None).all()
    assert mapped_frames(10, 0).sum() == 0
    np.testing.assert_array_equal(np.flatnonzero(mapped_frames(10, 3)), [0, 3, 6])
    np.testing.assert_array_equal(np.flatnonzero(mapped_frames(7, 7)), np.arange(7))
    assert mapped_frames(5, 9).all()  # more maps than frames: every frame


def test_maps_of_some_frames_equal_those_of_labelling_all():
    torch.manual_seed(0)
    teacher = PixelPolicy(PolicyConfig.for_task(TASK, "edge")).eval()
    frames = collect(teacher, TASK, 6, seed=0, progress=False)
    every, some = dict(frames), dict(frames)
    add_perturbation_maps(teacher, TASK, every, CONFIG, progress=False)
    add_perturbation_maps(teacher, TASK, some, CONFIG, progress=False, maps=2)
    np.testing.assert_array_equal(np.flatnonzero(some["mapped"]), [0, 3])
    np.testing.assert_allclose(some["saliency"][[0, 3]], every["saliency"][[0, 3]], rtol=0, atol=1e-6)
    assert not some["saliency"][~some["mapped"]].any() and every["mapped"].all()
    only = mapped_only(some)
    assert len(only["obs"]) == 2 and only["mapped"].all()
    np.testing.assert_array_equal(only["obs"], frames["obs"][[0, 3]])
    every_frame = mapped_only(frames)  # labels without `mapped` have a map on every frame
    assert every_frame["obs"].dtype == np.float32  # what the policies take
    np.testing.assert_array_equal(every_frame["obs"], frames["obs"])


def test_labels_keep_pixels_as_uint8_and_anything_else_as_float32():
    from edge_digr.labels import whole_pixels

    torch.manual_seed(0)
    teacher = PixelPolicy(PolicyConfig.for_task(TASK, "edge")).eval()
    frames = collect(teacher, TASK, 3, seed=0, progress=False)
    assert frames["obs"].dtype == np.uint8 and frames["mission"].dtype == np.float32
    env = TASK.make_env()
    raw, _ = env.reset(seed=0)
    np.testing.assert_array_equal(frames["obs"][0], TASK.preprocess(raw)["obs"])  # the same values, 1/4 the bytes
    env.close()
    assert whole_pixels(np.array([0.0, 17.0, 255.0], np.float32)).dtype == np.uint8
    for not_pixels in ([0.5, 3.0], [-1.0, 3.0], [0.0, 256.0]):
        kept = whole_pixels(np.array(not_pixels, np.float32))
        assert kept.dtype == np.float32 and kept.tolist() == not_pixels
    # A frame that is not whole pixels widens the stack: nothing is rounded away.
    assert np.stack([whole_pixels(np.array([1.0])), whole_pixels(np.array([1.5]))]).dtype == np.float32


def test_rollouts_side_by_side_interleave_their_episodes():
    """Workers collect their shares in processes of their own: worker w plays episodes w, w + n, w + 2n, …
    (ids and environment seeds), so the held-out split by episode draws on every worker; one worker is
    collect() itself."""
    from edge_digr.labels import collect_side_by_side

    task = TASK.with_train(max_episode_steps=4)  # short episodes: several per worker, budget kept across processes
    torch.manual_seed(0)
    teacher = PixelPolicy(PolicyConfig.for_task(task, "edge")).eval()
    alone = collect(teacher, task, 9, seed=3, progress=False)
    np.testing.assert_array_equal(alone["episode"], [0, 0, 0, 0, 1, 1, 1, 1, 2])
    assert len(collect_side_by_side(teacher, task, 1, seed=3, workers=2, progress=False)["obs"]) == 1

    two = collect_side_by_side(teacher, task, 9, seed=3, workers=2, progress=False)
    assert len(two["obs"]) == 9 and set(two) == set(alone)
    np.testing.assert_array_equal(two["episode"], [0, 0, 0, 0, 1, 1, 1, 1, 3])  # shares of 4 and 5 frames
    second = collect(teacher, task, 5, seed=3, progress=False, worker=1, workers=2)
    np.testing.assert_array_equal(two["obs"][4:], second["obs"])  # worker 1's share, as it would play it here
    np.testing.assert_array_equal(two["obs"][:4], alone["obs"][:4])  # episode 0 is the same game either way


def test_label_command_refuses_more_maps_than_frames(tmp_path):
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    save_checkpoint(teacher, PixelPolicy(PolicyConfig.for_task(TASK, "edge")), TASK.name, "teacher")
    result = CliRunner().invoke(main, ["label", "--teacher", str(teacher), "--frames", "4", "--maps", "5",
                                       "--out", str(tmp_path / "l.npz"), "--quiet"])
    assert result.exit_code != 0 and "--maps 5 exceeds the 4 frames" in result.output
    assert not (tmp_path / "l.npz").exists()
