"""Perturbation saliency against hand-computed cases; gradient saliency against finite differences."""
import numpy as np
import pytest
import torch

from edge_digr.core.perturbation import (PerturbationConfig, gaussian_blur, gaussian_masks, perturbation_saliency,
                                    upsample_grid)
from edge_digr.policies import PixelPolicy, PolicyConfig
from edge_digr.saliency import Perturbation, Saliency, input_gradient


def test_masks_are_gaussians_with_max_one_centred_on_the_grid():
    masks = gaussian_masks(12, 11, stride=5, sigma=5.0)
    assert masks.shape == (3 * 3, 12, 11)
    # grid point (row 1, col 2) is pixel (5, 10): mask index 1 * 3 + 2
    m = masks[5]
    assert m[5, 10] == pytest.approx(1.0)
    assert m.max() == pytest.approx(1.0)
    assert m[5 + 3, 10 - 4] == pytest.approx(np.exp(-(9 + 16) / 50.0), rel=1e-6)


def test_blur_matches_scipy_gaussian_filter():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(0).random((2, 3, 17, 23)).astype(np.float32)
    ref = scipy_ndimage.gaussian_filter(x, sigma=(0, 0, 3, 3))
    np.testing.assert_allclose(gaussian_blur(x, 3.0), ref, atol=1e-5)


def test_upsample_is_exact_on_grid_points_and_linear_between():
    grid = np.arange(9, dtype=np.float32).reshape(3, 3)
    up = upsample_grid(grid, 12, 12, 5)
    np.testing.assert_array_equal(up[::5, ::5], grid)
    assert up[0, 2] == pytest.approx(0.4)  # 2/5 of the way from 0 to 1
    assert up[0, 11] == pytest.approx(2.0)  # beyond the last grid point: clamped


def test_perturbation_score_of_a_one_pixel_policy_is_hand_computable():
    """f(x) = x[c=0, p, q]: Δf = M(p, q)·(x − blur(x))[p, q], so S(i, j) = ½·(g(i, j)·d)² with g the Gaussian."""
    h, w, p, q = 12, 14, 4, 7
    x = np.zeros((1, 1, h, w), np.float32)
    x[0, 0, p, q] = 100.0
    d = (x - gaussian_blur(x, 3.0))[0, 0, p, q]
    sal = perturbation_saliency(lambda feed: feed["obs"][:, 0, p, q][:, None], {"obs": x}, "obs",
                                PerturbationConfig(stride=5, mask_sigma=5.0, blur_sigma=3.0, batch_size=4))
    assert sal.shape == (1, h, w)
    for i in range(0, h, 5):
        for j in range(0, w, 5):
            g = np.exp(-((p - i) ** 2 + (q - j) ** 2) / 50.0)
            assert sal[0, i, j] == pytest.approx(0.5 * (g * d) ** 2, rel=1e-4)


def test_perturbation_of_a_flat_frame_is_zero():
    x = np.full((2, 3, 10, 10), 77.0, np.float32)
    sal = perturbation_saliency(lambda feed: feed["obs"].reshape(len(feed["obs"]), -1)[:, :5], {"obs": x})
    assert np.abs(sal).max() < 1e-6


def _policy(continuous=False, extra=0):
    torch.manual_seed(0)
    cfg = PolicyConfig(obs_shape=(2, 11, 13), n_out=3, continuous=continuous, convs=((4, 3, 2, 1),),
                       hidden=(8,), extra_dim=extra, extra_name="mission" if extra else "")
    return PixelPolicy(cfg).double().eval()


@pytest.mark.parametrize("continuous", [False, True])
def test_input_gradient_matches_finite_differences(continuous):
    policy = _policy(continuous)
    obs = torch.rand(1, 2, 11, 13, dtype=torch.float64) * 255
    grad = input_gradient(policy, (obs,))
    def target(o):
        out = policy(o)
        if continuous:
            return out[0, 1]
        return torch.log_softmax(out, -1)[0, out.argmax()]
    idx = (0, 1, 5, 7)
    bump = torch.zeros_like(obs)
    bump[idx] = 1e-3
    fd = (target(obs + bump) - target(obs - bump)) / 2e-3
    got = grad[(0, 1) + idx[1:]] if continuous else grad[idx]
    assert got.item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-10)


def test_saliency_is_abs_max_over_channels_and_continuous_gives_one_map_per_component():
    policy = _policy(continuous=True, extra=2)
    obs = torch.rand(3, 2, 11, 13, dtype=torch.float64) * 255
    mission = torch.eye(2, dtype=torch.float64)[[0, 1, 0]]
    maps = Saliency(policy).attribute((obs, mission))
    grad = input_gradient(policy, (obs, mission)).numpy()
    assert maps.shape == (3, 3, 11, 13)
    np.testing.assert_allclose(maps, np.abs(grad).max(axis=2))


def test_perturbation_explainer_holds_the_extra_input_fixed():
    policy = _policy(extra=2).float()
    obs = torch.rand(2, 2, 11, 13) * 255
    mission = torch.eye(2)
    maps = Perturbation(policy, PerturbationConfig(batch_size=7)).attribute((obs, mission))
    assert maps.shape == (2, 11, 13) and np.isfinite(maps).all() and maps.max() > 0
