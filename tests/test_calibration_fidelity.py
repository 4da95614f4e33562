"""Fidelity metrics (action agreement, saliency Pearson, top-10 % IoU, logit error) and the report table."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_digr.calibration.fidelity import compare_outputs, fidelity_table
from edge_digr.core.metrics import pearson as pearson_per_map, top_iou as top_fraction_iou
from edge_digr.core.errors import UserError


def _outputs(n=20, a=4, hw=6, seed=0):
    rng = np.random.default_rng(seed)
    return {"logits": rng.normal(size=(n, a)).astype(np.float32),
            "saliency": rng.random((n, hw, hw)).astype(np.float32)}


def test_identical_outputs_are_perfect():
    ref = _outputs()
    fid = compare_outputs(ref, {k: v.copy() for k, v in ref.items()}, continuous=False)
    assert fid.action_agreement == 1.0 and fid.top10_iou == 1.0
    assert fid.saliency_pearson == pytest.approx(1.0) and fid.saliency_pearson_min == pytest.approx(1.0)
    assert fid.max_logit_error == 0.0 and fid.max_saliency_error == 0.0 and fid.frames == 20


def test_action_flips_and_logit_error_are_counted():
    ref = _outputs()
    cand = {k: v.copy() for k, v in ref.items()}
    greedy = ref["logits"].argmax(1)
    cand["logits"][np.arange(5), (greedy[:5] + 1) % 4] += 100.0  # five frames now prefer another action
    fid = compare_outputs(ref, cand, continuous=False)
    assert fid.action_agreement == pytest.approx(15 / 20)
    assert fid.max_logit_error == pytest.approx(100.0)


def test_saliency_metrics_respond_to_changes():
    ref = _outputs()
    cand = {"logits": ref["logits"], "saliency": ref["saliency"][::-1].copy()}  # maps of other frames
    fid = compare_outputs(ref, cand, continuous=False)
    assert fid.saliency_pearson < 0.5 and fid.top10_iou < 0.6
    neg = compare_outputs(ref, {"logits": ref["logits"], "saliency": -ref["saliency"]}, continuous=False)
    assert neg.saliency_pearson == pytest.approx(-1.0)


def test_continuous_outputs_one_map_per_action_component():
    rng = np.random.default_rng(1)
    ref = {"action": rng.normal(size=(8, 2)), "saliency": rng.random((8, 2, 5, 5))}
    cand = {"action": ref["action"] + np.array([0.0, 0.01]), "saliency": ref["saliency"].copy()}
    cand["saliency"][0, 1] = rng.random((5, 5))  # one component's map of one frame replaced
    cand["action"][3] += 1.0  # one frame off by more than the tolerance
    fid = compare_outputs(ref, cand, continuous=True, action_atol=0.05)
    assert fid.action_agreement == pytest.approx(7 / 8)
    assert fid.saliency_pearson_min < 0.9 < fid.saliency_pearson  # 1 of 16 maps differs


def test_constant_maps():
    zeros = np.zeros((2, 9))
    assert pearson_per_map(zeros, zeros).tolist() == [1.0, 1.0]  # both flat and equal
    varied = np.arange(18, dtype=float).reshape(2, 9)
    assert pearson_per_map(zeros, varied).tolist() == [0.0, 0.0]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3), shift=st.floats(-10, 10))
def test_pearson_and_iou_are_invariant_to_positive_affine_maps(seed, scale, shift):
    maps = np.random.default_rng(seed).random((3, 40))
    np.testing.assert_allclose(pearson_per_map(maps, maps * scale + shift), 1.0, atol=1e-9)
    np.testing.assert_array_equal(top_fraction_iou(maps, maps * scale + shift), 1.0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_metrics_are_bounded_and_symmetric(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random((4, 30)), rng.random((4, 30))
    r, iou = pearson_per_map(a, b), top_fraction_iou(a, b)
    assert np.all(np.abs(r) <= 1.0) and np.all((iou >= 0) & (iou <= 1))
    np.testing.assert_allclose(r, pearson_per_map(b, a))
    np.testing.assert_allclose(iou, top_fraction_iou(b, a))


def test_top_fraction_counts_the_top_pixels():
    ref = np.arange(100, dtype=float)[None]
    cand = ref.copy()
    cand[0, 95:] = 0.0  # half of the top-10 % pixels demoted
    # top sets: ref {90..99}; cand {85..94} -> |{90..94}| / |{85..99}| = 5 / 15
    assert top_fraction_iou(ref, cand)[0] == pytest.approx(5 / 15)


def test_mismatched_outputs_are_refused():
    ref = _outputs()
    with pytest.raises(UserError, match="no output 'saliency'"):
        compare_outputs(ref, {"logits": ref["logits"]}, continuous=False)
    with pytest.raises(UserError, match="shape"):
        compare_outputs(ref, {"logits": ref["logits"][:3], "saliency": ref["saliency"]}, continuous=False)


def test_table_has_one_row_per_model_and_the_threshold():
    ref = _outputs()
    fid = compare_outputs(ref, ref, continuous=False)
    table = fidelity_table({"int8": fid, "int8 (backward fp32)": fid}, {"saliency_pearson": 0.95})
    lines = table.splitlines()
    assert len(lines) == 3 and ">=0.95" in lines[0] and lines[2].startswith("int8 (backward fp32)")
    assert "100.00%" in lines[1]
