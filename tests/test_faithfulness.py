"""Deletion faithfulness: a map that ranks the pixels the decision depends on first must score above chance."""
import numpy as np

import edge_digr
from edge_digr.core.metrics import deletion, saliency_agreement

H = W = 20


def frames(n=6, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.uniform(0, 255, size=(n, 3, H, W)).astype(np.float32)
    obs[:, :, 8:12, 8:12] = 255.0  # a bright patch: blurring it lowers its pixels
    return {"obs": obs}


def patch_head(feed):
    """Discrete head whose action 0 logit reads only the central patch: log π(0) falls as the patch dims."""
    patch = feed["obs"][:, :, 8:12, 8:12].mean(axis=(1, 2, 3)) / 255.0
    return np.stack([8.0 * patch, np.full_like(patch, 4.0)], axis=1)


def patch_map(n, inside=True):
    maps = np.zeros((n, H, W), dtype=np.float32)
    if inside:
        maps[:, 8:12, 8:12] = 1.0
    else:
        maps[:, :4, :4] = 1.0
    return maps + np.linspace(0, 1e-3, H * W, dtype=np.float32).reshape(H, W)  # no ties


def test_a_map_on_the_decisive_pixels_beats_chance_and_a_map_elsewhere_does_not():
    feed = frames()
    good = deletion(patch_head, patch_map(6), feed, continuous=False)
    bad = deletion(patch_head, patch_map(6, inside=False), feed, continuous=False)
    assert good["deletion_auc"] > good["deletion_auc_random"] > 0
    assert good["deletion_gain"] > 0 > bad["deletion_gain"]
    assert good["deletion_auc_random"] == bad["deletion_auc_random"]  # one fixed random order
    assert edge_digr.deletion is deletion  # the Python API


def test_continuous_heads_use_the_mean_absolute_change_of_every_component():
    feed = frames()

    def head(f):
        patch = f["obs"][:, :, 8:12, 8:12].mean(axis=(1, 2, 3)) / 255.0
        return np.stack([patch, -patch, np.zeros_like(patch)], axis=1)

    maps = np.repeat(patch_map(6)[:, None], 3, axis=1)  # (N, K, H, W) as continuous policies give
    out = deletion(head, maps, feed, continuous=True)
    assert out["deletion_auc"] > out["deletion_auc_random"] >= 0


def test_pointing_reports_the_teacher_perturbation_maps_own_pointing_as_the_ceiling():
    teacher = patch_map(4)
    target = np.zeros((4, H, W), dtype=bool)
    target[:, 8:12, 8:12] = True
    out = saliency_agreement(patch_map(4, inside=False), teacher, target)
    assert out["pointing_teacher_perturbation"] > 0.9 > 0.1 > out["pointing"]
