"""The task environments as the policies see them."""
import numpy as np
import pytest

from edge_digr.core.tasks import MINIGRID_ENV_ID, MINIGRID_TILE, get_task

gym = pytest.importorskip("gymnasium")
pytest.importorskip("minigrid")


def test_minigrid_image_is_minigrids_full_grid_render_pixel_for_pixel():
    """FullGridImage skips MiniGrid's partial-view work; the frames must still be RGBImgObsWrapper's."""
    from minigrid.wrappers import RGBImgObsWrapper

    ours = get_task("minigrid-fetch").make_env()
    reference = RGBImgObsWrapper(gym.make(MINIGRID_ENV_ID, highlight=False), tile_size=MINIGRID_TILE)
    assert ours.observation_space["image"] == reference.observation_space["image"]
    rng = np.random.default_rng(0)
    pickups = 0
    for episode in range(12):
        a, _ = ours.reset(seed=episode)
        b, _ = reference.reset(seed=episode)
        for _ in range(60):
            assert np.array_equal(a["image"], b["image"]) and a["mission"] == b["mission"]
            assert a["direction"] == b["direction"]
            action = int(rng.integers(4))
            pickups += action == 3
            a, ra, ta, tra, _ = ours.step(action)
            b, rb, tb, trb, _ = reference.step(action)
            assert (ra, ta, tra) == (rb, tb, trb)
            if ta or tra:
                break
    assert pickups > 0  # the walk picked things up, so carried objects were rendered too


def test_car_racing_frames_are_gymnasiums_own_pixel_for_pixel():
    """The vectorised road renderer draws what gymnasium's draws: the zoom-in at the start, turns, and tiles
    that change colour once driven over, on two tracks."""
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("Box2D")
    task = get_task("car-racing")
    ours, theirs = task.make_env(), gym.make("CarRacing-v3", continuous=True)
    assert ours.unwrapped._render_road.__func__ is not type(ours.unwrapped)._render_road  # the fast one is in
    rng = np.random.default_rng(0)
    for seed in (0, 3):
        a, _ = ours.reset(seed=seed)
        b, _ = theirs.reset(seed=seed)
        np.testing.assert_array_equal(a, b)
        for step in range(150):
            action = np.array([rng.uniform(-1, 1), rng.uniform(0.3, 1), 0.0], np.float32)
            a, b = ours.step(action)[0], theirs.step(action)[0]
            assert np.array_equal(a, b), f"seed {seed}, step {step}: frames differ"
    ours.close()
    theirs.close()
