"""Policy checkpoints: a format tag, a JSON-able config and a state_dict, loaded with weights_only=True.

Also reads Stable-Baselines3 `.zip` archives trained elsewhere: only their `policy.pth` weights are read
(with weights_only=True); the archive's pickled `data` entry is never deserialised.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from edge_digr.core.errors import UserError
from edge_digr.core.fileio import PathLike, atomic_path
from edge_digr.policies import PixelPolicy, PolicyConfig
from edge_digr.core.tasks import get_task

FORMAT = "edge-digr/policy@1"


def save_checkpoint(path: PathLike, policy: PixelPolicy, task: str, role: str, **info: Any) -> None:
    """Write `path` atomically. `info` must be JSON-able (it is checked here, not at load time)."""
    config = {"task": task, "role": role, "policy": policy.cfg.to_dict(), **info}
    json.dumps(config)  # fail now on anything that would not survive weights_only loading
    state = to_cpu(policy.state_dict())
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "config": config, "state_dict": state}, tmp)


def to_cpu(obj: Any) -> Any:
    """`obj` (a state dict, an optimizer's, nested dicts/lists of tensors) with every tensor on the CPU:
    what is saved never depends on the device it was trained on."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def _torch_load(source: Any, origin: str) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{origin} does not exist; check the path") from None
    except Exception as exc:  # corrupt zip, truncated file, or an object weights_only refuses
        raise UserError(f"{origin} is not a readable weights file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160]}); pass an edge-digr .pt or an SB3 .zip") from None


def read_resume_state(path: PathLike, keys: Tuple[str, ...]) -> Dict[str, Any]:
    """The state a `--resume` continues from, or a one-line error: it is unreadable, and how to start over."""
    start_over = "delete it to start over, or run without --resume"
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, empty, or an object weights_only refuses
        raise UserError(f"{path} is unreadable ({type(exc).__name__}); {start_over}") from None
    if not isinstance(blob, dict) or any(k not in blob for k in keys):
        raise UserError(f"{path} is not a resume state of this command; {start_over}")
    return blob


def _read_checkpoint(path: PathLike) -> Dict[str, Any]:
    if not Path(path).exists():
        raise UserError(f"{path} does not exist; check the path")
    if Path(path).stat().st_size == 0:
        raise UserError(f"{path} is empty; pass an edge-digr .pt or an SB3 .zip")
    blob = _torch_load(str(path), str(path))
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("config"), dict) \
            or not isinstance(blob.get("state_dict"), dict):
        raise UserError(f"{path} is not an edge-digr checkpoint (format {FORMAT!r}); "
                        "train one with `edge-digr train-teacher` or `edge-digr distill`")
    return blob


def load_checkpoint(path: PathLike) -> Tuple[PixelPolicy, Dict[str, Any]]:
    """(policy in eval mode, config) from an edge-digr checkpoint."""
    blob = _read_checkpoint(path)
    config = blob["config"]
    policy = PixelPolicy(PolicyConfig.from_dict(config["policy"]))
    policy.load_state_dict(blob["state_dict"])
    return policy.eval(), config


def load_policy(path: PathLike, task: Optional[str] = None) -> PixelPolicy:
    """`edge_digr.load_policy`: a torch module (eval mode) from an edge-digr `.pt` or an SB3 `.zip`."""
    if str(path).endswith(".zip"):
        if task is None:
            raise UserError(f"{path} is an SB3 archive; say which task it was trained on (--task)")
        return load_sb3_zip(path, task)
    return load_checkpoint(path)[0]


def policy_task(path: PathLike, given: Optional[str] = None) -> str:
    """The task a policy file was made for, read from the file: an edge-digr .pt's config, or the manifest
    of an .onnx or a .plan; `given` (--task) must agree with it. An SB3 .zip records none: `given` names it."""
    name = str(path)
    if name.endswith(".zip"):
        if given is None:
            raise UserError(f"{path} is an SB3 archive, which does not record its task; pass --task")
        return given
    if name.endswith(".onnx"):
        from edge_digr.core.manifest import read_onnx_manifest

        manifest = read_onnx_manifest(path) if Path(path).exists() else None
        if manifest is None:
            raise UserError(f"{path} is not an edge-digr model with a manifest; export it with `edge-digr export`")
        recorded = manifest.task
    elif name.endswith((".plan", ".engine")):
        from edge_digr.core.manifest import read_sidecar

        recorded = read_sidecar(path).task
    else:
        recorded = _read_checkpoint(path)["config"].get("task")
    if not isinstance(recorded, str):
        raise UserError(f"{path} does not record its task; pass an edge-digr .pt from this version")
    if given is not None and given != recorded:
        raise UserError(f"{path} was trained on {recorded!r}, not {given!r}; "
                        f"pass --task {recorded} or leave --task out")
    get_task(recorded)  # a task this install does not know is refused here, in one line
    return recorded


# -------------------------------------------------------------------------------------- SB3 archives
def _sb3_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    try:
        with zipfile.ZipFile(path) as archive:
            if "policy.pth" not in archive.namelist():
                raise UserError(f"{path} has no policy.pth: not a Stable-Baselines3 model archive")
            raw = archive.read("policy.pth")
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; check the path") from None
    except zipfile.BadZipFile:
        raise UserError(f"{path} is not a zip archive: pass an SB3 model .zip") from None
    return _torch_load(io.BytesIO(raw), f"policy.pth in {path}")


def _nature_config(state: Dict[str, torch.Tensor], task_cfg: PolicyConfig) -> PolicyConfig:
    """SB3's NatureCNN (CnnPolicy) layout: cnn.{0,2,4} with strides 4, 2, 1, then linear.0."""
    convs = []
    for idx, stride in zip((0, 2, 4), (4, 2, 1)):
        w = state[f"features_extractor.cnn.{idx}.weight"]
        convs.append((w.shape[0], w.shape[2], stride, 0))
    hidden = (state["features_extractor.linear.0.weight"].shape[0],)
    return PolicyConfig(obs_shape=task_cfg.obs_shape, n_out=task_cfg.n_out, continuous=task_cfg.continuous,
                        convs=tuple(convs), hidden=hidden)


def sb3_to_policy_state(state: Dict[str, torch.Tensor], policy: PixelPolicy) -> Dict[str, torch.Tensor]:
    """Map SB3 ActorCriticPolicy keys onto `policy`'s keys (actor side only)."""
    if any(k.startswith("mlp_extractor.policy_net.") for k in state):
        raise UserError("the SB3 policy has hidden layers in its mlp_extractor (net_arch); edge-digr reads "
                        "policies with net_arch=[] (CnnPolicy's default, and edge-digr's own teachers)")
    out: Dict[str, torch.Tensor] = {}
    if "features_extractor.cnn.0.weight" in state:  # NatureCNN: cnn.{0,2,4}, then linear.0, in forward order
        sources = ["features_extractor.cnn.0", "features_extractor.cnn.2", "features_extractor.cnn.4",
                   "features_extractor.linear.0"]
        names = {id(m): n for n, m in policy.named_modules()}
        for src, layer in zip(sources, policy.trunk.weight_layers()):
            for p in ("weight", "bias"):
                out[f"{names[id(layer)]}.{p}"] = state[f"{src}.{p}"]
    else:  # edge-digr's own extractor wraps a PixelTrunk as `trunk`
        prefix = "features_extractor.trunk."
        out.update({"trunk." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    out["head.weight"] = state["action_net.weight"]
    out["head.bias"] = state["action_net.bias"]
    return out


def load_sb3_zip(path: PathLike, task_name: str) -> PixelPolicy:
    task = get_task(task_name)
    state = _sb3_state_dict(path)
    cfg = PolicyConfig.for_task(task)
    if "features_extractor.cnn.0.weight" in state:
        cfg = _nature_config(state, cfg)
    policy = PixelPolicy(cfg)
    try:
        policy.load_state_dict(sb3_to_policy_state(state, policy))
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"{path} does not match task {task_name!r}'s policy layout "
                        f"({str(exc).splitlines()[0][:200]})") from None
    return policy.eval()
