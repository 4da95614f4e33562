"""DIGR distillation: policy distillation + λ·‖A ⊙ ∂g_S/∂x‖² on the teacher's non-salient region A.

Modes from the same loop: `digr` (A from the teacher's perturbation map), `plain` (λ = 0) and `igr`
(A = everywhere: global input-gradient regularisation). The gradient is taken with respect to the
normalised input x/255, so λ does not depend on the pixel scale; the saliency target g is exactly the
one the exported graph differentiates (edge_digr.policies.saliency_target).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from edge_digr.checkpoint import save_checkpoint
from edge_digr.errors import UserError
from edge_digr.fileio import PathLike, atomic_path
from edge_digr.policies import PixelPolicy, PolicyConfig
from edge_digr.saliency import input_gradient
from edge_digr.tasks import Task

MODES = ("digr", "plain", "igr")
MASK_RULES = ("fraction", "topk")


@dataclass
class DistillConfig:
    mode: str = "digr"
    lam: float = 1.0  # weight of the input-gradient penalty (ignored by `plain`)
    mask_rule: str = "fraction"  # fraction: non-salient = below threshold × frame max; topk: outside the top threshold share
    mask_threshold: float = 0.1
    temperature: float = 1.0
    arch: str = "teacher"  # student architecture: the teacher's, or the smaller `edge`
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.mask_rule not in MASK_RULES:
            raise UserError(f"--mask-rule must be one of {', '.join(MASK_RULES)}, not {self.mask_rule!r}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise UserError(f"--mask-threshold must be in (0, 1), got {self.mask_threshold}")
        if self.temperature <= 0 or self.lam < 0 or self.epochs < 1:
            raise UserError("--temperature must be > 0, --lam ≥ 0 and --epochs ≥ 1")


def selection_mask(maps: np.ndarray, rule: str, threshold: float) -> np.ndarray:
    """A: 1 on the teacher's non-salient pixels of each (N, H, W) map, 0 on the salient ones."""
    flat = maps.reshape(len(maps), -1)
    if rule == "fraction":
        keep = flat >= threshold * flat.max(axis=1, keepdims=True)
    else:  # topk: the `threshold` share of pixels with the highest score is salient
        k = max(1, int(round(threshold * flat.shape[1])))
        cut = -np.partition(-flat, k - 1, axis=1)[:, k - 1:k]
        keep = flat >= cut
    return (~keep).reshape(maps.shape).astype(np.float32)


def distillation_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, continuous: bool,
                      temperature: float) -> torch.Tensor:
    if continuous:
        return F.mse_loss(student_out, teacher_out)
    t = temperature
    return F.kl_div(F.log_softmax(student_out / t, -1), F.log_softmax(teacher_out / t, -1),
                    log_target=True, reduction="batchmean") * t * t


def gradient_penalty(student: PixelPolicy, inputs, region: torch.Tensor) -> torch.Tensor:
    """mean over frames of Σ A·(∂g/∂(x/255))², summed over channels and action components."""
    grad = input_gradient(student, inputs, create_graph=True) * 255.0
    sq = grad.pow(2).sum(dim=-3)  # over channels → (N, H, W) or (N, K, H, W)
    if sq.dim() == 4:
        sq = sq.sum(dim=1)
    return (sq * region).flatten(1).sum(1).mean()


def distill(task: Task, train: Dict[str, np.ndarray], cfg: DistillConfig, out: PathLike,
            resume: bool = False, progress: bool = True) -> PixelPolicy:
    """Train a student on labelled frames; checkpoints every epoch to `<out>.resume.pt` for --resume."""
    from tqdm import tqdm

    cfg.validate()
    torch.manual_seed(cfg.seed)
    student = PixelPolicy(PolicyConfig.for_task(task, cfg.arch))
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    names = [spec.name for spec in task.inputs]
    tensors = {n: torch.from_numpy(np.ascontiguousarray(train[n], dtype=np.float32)) for n in names}
    teacher_out = torch.from_numpy(train["teacher_out"].astype(np.float32))
    if cfg.mode == "igr":
        region = torch.ones(train["saliency"].shape)
    else:
        region = torch.from_numpy(selection_mask(train["saliency"], cfg.mask_rule, cfg.mask_threshold))
    lam = 0.0 if cfg.mode == "plain" else cfg.lam

    resume_path = Path(str(out) + ".resume.pt")
    start = 0
    if resume and resume_path.exists():
        state = torch.load(resume_path, map_location="cpu", weights_only=True)
        if state["config"] != asdict(cfg):
            raise UserError(f"{resume_path} was written with other options ({state['config']}); "
                            "resume with the same options or delete it")
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["epoch"])
    elif resume:
        raise UserError(f"nothing to resume: {resume_path} does not exist; start without --resume")

    n = len(teacher_out)
    steps_per_epoch = (n + cfg.batch_size - 1) // cfg.batch_size
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start * steps_per_epoch, unit="batch",
               desc=f"distill {cfg.mode}", disable=not progress, dynamic_ncols=True)
    student.train()
    for epoch in range(start, cfg.epochs):
        # Each epoch's order depends on (seed, epoch) only, so a resumed run repeats the uninterrupted one.
        order = np.random.default_rng((cfg.seed, epoch)).permutation(n)
        for i in range(0, n, cfg.batch_size):
            idx = torch.from_numpy(order[i:i + cfg.batch_size])
            inputs = tuple(tensors[name][idx] for name in names)
            loss = distillation_loss(student(*inputs), teacher_out[idx], task.action.continuous, cfg.temperature)
            reg = gradient_penalty(student, inputs, region[idx]) if lam > 0 else torch.zeros(())
            optimizer.zero_grad()
            (loss + lam * reg).backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", reg=f"{reg.item():.4f}", refresh=False)
            bar.update(1)
        with atomic_path(resume_path) as tmp:
            torch.save({"student": student.state_dict(), "optimizer": optimizer.state_dict(),
                        "epoch": epoch + 1, "config": asdict(cfg)}, tmp)
    bar.close()
    student.eval()
    save_checkpoint(out, student, task.name, "student", distill=asdict(cfg))
    resume_path.unlink(missing_ok=True)
    return student
