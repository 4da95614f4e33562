"""Runner interface (ONNX Runtime), bad model files, and importing the runtime without torch."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edge_digr.core.errors import UserError
from edge_digr.core.manifest import for_task, write_sidecar
from edge_digr.runtime import OnnxRuntimeRunner, Runner, open_runner
from edge_digr.core.tasks import get_task
from runtime_fixtures import contract_onnx, reference_outputs

FETCH_ACTIONS = get_task("minigrid-fetch").action.n


@pytest.fixture(scope="module")
def fetch_onnx(tmp_path_factory):
    return contract_onnx(tmp_path_factory.mktemp("m") / "fetch.onnx", "minigrid-fetch", seed=3)


def _fetch_feed(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    mission = np.zeros((n, 8), np.float32)
    mission[np.arange(n), rng.integers(0, 6, n)] = 1
    mission[np.arange(n), 6 + rng.integers(0, 2, n)] = 1
    return {"obs": rng.uniform(0, 255, (n, 3, 40, 40)).astype(np.float32), "mission": mission}


def test_runner_interface_and_outputs(fetch_onnx):
    runner = open_runner(fetch_onnx)
    assert isinstance(runner, OnnxRuntimeRunner) and isinstance(runner, Runner)
    assert runner.manifest.task == "minigrid-fetch"
    assert runner.input_names == ["obs", "mission"] and runner.output_names == ["logits", "saliency"]
    assert runner.last_ms is None and runner.timings_ms == []
    with runner:
        feed = _fetch_feed(3)
        out = runner.infer(feed)
        ref = reference_outputs("minigrid-fetch", feed, seed=3)
        assert set(out) == {"logits", "saliency"}
        assert out["logits"].shape == (3, FETCH_ACTIONS) and out["saliency"].shape == (3, 40, 40)
        # the mission really reaches its own input: the reference depends on both inputs
        np.testing.assert_allclose(out["logits"], ref["logits"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out["saliency"], ref["saliency"], rtol=1e-5, atol=1e-6)
        runner.infer(_fetch_feed(1, seed=1))
        assert len(runner.timings_ms) == 2 and runner.last_ms == runner.timings_ms[-1] > 0
        assert "CPUExecutionProvider" in runner.providers
    runner.reset_timings()
    assert runner.timings_ms == [] and runner.last_ms is None


def test_infer_outside_with_activates_lazily(fetch_onnx):
    runner = open_runner(fetch_onnx)
    out = runner.infer(_fetch_feed(1))
    assert out["logits"].shape == (1, FETCH_ACTIONS)
    runner.close()


def test_threads_and_spinning_reach_the_session(fetch_onnx):
    key = "session.intra_op.allow_spinning"
    with open_runner(fetch_onnx, threads=1, spin=False) as runner:
        runner.infer(_fetch_feed(2))
        opts = runner._session.get_session_options()
        assert opts.intra_op_num_threads == 1 and opts.get_session_config_entry(key) == "0"
    with open_runner(fetch_onnx) as runner:  # default: ONNX Runtime's own (spinning) pool
        runner.infer(_fetch_feed(2))
        with pytest.raises(RuntimeError, match="does not have configuration"):
            runner._session.get_session_options().get_session_config_entry(key)


def test_session_options_follow_the_batch_size(fetch_onnx):
    """Issue 17: no weight prepacking at batch 1 (one copy of each weight), prepacking from batch 2 on; a call at
    the other kind of batch opens its own session, with the same outputs."""
    key = "session.disable_prepacking"
    with open_runner(fetch_onnx, threads=1) as runner:
        one = runner.infer(_fetch_feed(1))
        assert runner._session.get_session_options().get_session_config_entry(key) == "1"
        two = runner.infer({k: np.concatenate([v, v]) for k, v in _fetch_feed(1).items()})
        assert len(runner._sessions) == 2
        np.testing.assert_allclose(two["saliency"][1], one["saliency"][0], rtol=1e-5, atol=1e-9)
    with open_runner(fetch_onnx, batch=32) as runner:
        runner.infer(_fetch_feed(32))
        assert len(runner._sessions) == 1
        with pytest.raises(RuntimeError, match="does not have configuration"):
            runner._session.get_session_options().get_session_config_entry(key)


def test_options_of_the_other_runner_are_refused(fetch_onnx):
    with pytest.raises(UserError, match="cuda_graph do not apply to an ONNX model"):
        open_runner(fetch_onnx, cuda_graph=True)


def test_unknown_provider_is_a_user_error(fetch_onnx):
    with pytest.raises(UserError, match="NoSuchExecutionProvider"):
        with open_runner(fetch_onnx, providers=["NoSuchExecutionProvider"]):
            pass


@pytest.mark.parametrize("change, match", [
    (lambda f: f.pop("mission"), "needs input"),
    (lambda f: f.__setitem__("obs", f["obs"][:, :, :20]), "shape"),
    (lambda f: f.__setitem__("obs", f["obs"][0]), "shape"),  # unbatched
    (lambda f: f.__setitem__("mission", f["mission"][:1]), "disagree on the batch size"),  # batch sizes disagree
])
def test_bad_feed_is_a_user_error(fetch_onnx, change, match):
    feed = _fetch_feed(2)
    change(feed)
    with open_runner(fetch_onnx) as runner, pytest.raises(UserError, match=match):
        runner.infer(feed)


def test_missing_empty_truncated_corrupt_models(tmp_path, fetch_onnx):
    data = fetch_onnx.read_bytes()
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    cases = {"missing.onnx": "does not exist", "empty.onnx": "empty", "truncated.onnx": "not a readable ONNX",
             "corrupt.onnx": "not a readable ONNX"}
    for name, match in cases.items():
        with pytest.raises(UserError, match=match) as info:
            open_runner(tmp_path / name).activate()
        assert "\n" not in str(info.value)


def test_onnx_without_manifest(tmp_path):
    import onnx

    path = contract_onnx(tmp_path / "m.onnx", "atari-breakout")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(path))
    with pytest.raises(UserError, match="no edge-digr manifest"):
        open_runner(path)


def test_manifest_that_does_not_match_the_graph(tmp_path):
    # An Atari graph carrying the MiniGrid manifest: input names differ.
    wrong_names = contract_onnx(tmp_path / "a.onnx", "atari-breakout", manifest=for_task("minigrid-fetch"))
    with pytest.raises(UserError, match="does not match its graph"):
        open_runner(wrong_names).activate()
    # Same names, other shape: a car-racing graph (3x96x96) described by the carla manifest (3x96x160).
    wrong_shape = contract_onnx(tmp_path / "c.onnx", "car-racing", manifest=for_task("carla"))
    with pytest.raises(UserError, match="shape"):
        open_runner(wrong_shape).activate()


def test_unknown_suffix_and_plan_without_manifest(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="unknown model type"):
        open_runner(tmp_path / "model.bin")
    (tmp_path / "model.plan").write_bytes(b"not an engine")
    with pytest.raises(UserError, match="edge-digr build"):
        open_runner(tmp_path / "model.plan")


def test_plan_without_tensorrt_installed_says_how_to_install(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not an engine")
    write_sidecar(plan, for_task("atari-breakout"))
    code = textwrap.dedent(f"""
        import sys
        sys.modules["tensorrt"] = None
        from edge_digr.core.errors import UserError
        from edge_digr.runtime import open_runner
        runner = open_runner({str(plan)!r})
        assert runner.manifest.task == "atari-breakout"
        try:
            runner.activate()
        except UserError as exc:
            print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'edge-digr[trt]'" in out.stdout


TORCH_FREE = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import edge_digr.runtime
import edge_digr.runtime.runners, edge_digr.runtime.feeds, edge_digr.runtime.overlay
import edge_digr.runtime.loop, edge_digr.runtime.commands, edge_digr.runtime.trt_backend
import edge_digr.core.carla_env
"""


def test_runtime_imports_and_infers_without_torch(fetch_onnx):
    code = TORCH_FREE + textwrap.dedent(f"""
        import json, numpy as np
        from edge_digr.runtime import open_runner
        with open_runner({str(fetch_onnx)!r}) as r:
            out = r.infer({{"obs": np.zeros((1, 3, 40, 40), np.float32), "mission": np.ones((1, 8), np.float32)}})
        print(json.dumps({{k: list(v.shape) for k, v in out.items()}}))
        print("torch" in sys.modules and sys.modules["torch"] is not None)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    shapes, torch_loaded = out.stdout.strip().splitlines()
    assert json.loads(shapes) == {"logits": [1, FETCH_ACTIONS], "saliency": [1, 40, 40]}
    assert torch_loaded == "False"
