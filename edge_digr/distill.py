"""DIGR distillation: policy distillation + λ·‖A ⊙ ∂g_S/∂x‖² on the teacher's non-salient region A.

Modes from the same loop: `digr` (A from the teacher's perturbation map), `plain` (λ = 0) and `igr`
(A = everywhere: global input-gradient regularisation). The gradient is taken with respect to the
normalised input x/255, so λ does not depend on the pixel scale; the saliency target g is exactly the
one the exported graph differentiates (edge_digr.policies.saliency_target).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from edge_digr.checkpoint import read_resume_state, save_checkpoint, to_cpu
from edge_digr.core.errors import UserError
from edge_digr.core.fileio import PathLike, atomic_path
from edge_digr.distributed import Distributed
from edge_digr.labels import add_perturbation_maps, collect, whole_pixels
from edge_digr.mirror import flip_rows, mirrored_actions, mirrored_logits
from edge_digr.policies import PixelPolicy, PolicyConfig, start_from_teacher
from edge_digr.saliency import input_gradient
from edge_digr.core.tasks import Task

MODES = ("digr", "plain", "igr")
MASK_RULES = ("fraction", "topk")
INITS = ("random", "teacher")


@dataclass
class DistillConfig:
    mode: str = "digr"
    lam: float = 0.3  # weight of the input-gradient penalty (ignored by `plain`); for_task: the task's, per mode
    # fraction: non-salient = below threshold × frame max; topk: outside the top threshold share.
    mask_rule: str = "fraction"
    mask_threshold: float = 0.1
    temperature: float = 1.0
    arch: str = "teacher"  # student architecture: the teacher's, or the smaller `edge`
    init: str = "random"  # random weights, or "teacher": the teacher's, pruned to the student (start_from_teacher)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    dagger_rounds: int = 0  # student rollouts labelled by the teacher and added during training
    dagger_frames: int = 2000  # frames per DAgger round
    # Of each round's frames, how many (evenly spaced) also get the teacher's perturbation map (None: all).
    # A map costs hundreds of teacher passes, an action label one: on car-racing the student needs tens of
    # thousands of labelled frames to drive, the penalty only a few thousand maps.
    dagger_maps: Optional[int] = None
    # Where the task is left-right symmetric (TrainSpec.mirror_actions), a random half of every batch is
    # mirrored: frame, teacher output and teacher map (edge_digr.mirror). Off only to measure what it adds.
    mirror: bool = True

    @property
    def penalty_norm(self) -> str:
        """The penalty's form, fixed by the mode. digr: "share", each frame's ‖A ⊙ ∇g‖² divided by its ‖∇g‖²,
        which penalises where the gradient lies, not its size. On all three task families it beat plain
        distillation on agreement and deletion faithfulness, and DESIGN.md's raw ‖A ⊙ ∇g‖², which also rewards
        shrinking the gradient everywhere, trailed it on both, so the raw form is no longer offered
        (docs/RESULTS.md, "Which penalty is DIGR's"). igr: "none", the raw energy, by definition: its region is
        every pixel, where the share is 1 whatever the gradient. plain has no penalty."""
        return "share" if self.mode == "digr" else "none"

    @classmethod
    def for_task(cls, task: Task, mode: str, seed: int = 0, **overrides: Any) -> "DistillConfig":
        """The task's distillation budget, with the options given (not None) taking precedence."""
        t = task.train
        base = dict(lam={"digr": t.digr_lambda, "igr": t.igr_lambda}.get(mode, 0.0), epochs=t.distill_epochs,
                    dagger_rounds=t.dagger_rounds, dagger_frames=t.dagger_frames, dagger_maps=t.dagger_maps,
                    arch=t.student_arch, init=t.student_init, lr=t.distill_lr)
        given = {k: v for k, v in overrides.items() if v is not None}
        base.update(given)
        if "dagger_maps" not in given and base["dagger_maps"] is not None:  # the task's share of fewer frames
            base["dagger_maps"] = min(base["dagger_maps"], base["dagger_frames"])
        return cls(mode=mode, seed=seed, **base)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.init not in INITS:
            raise UserError(f"--init must be one of {', '.join(INITS)}, not {self.init!r}")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if self.mask_rule not in MASK_RULES:
            raise UserError(f"--mask-rule must be one of {', '.join(MASK_RULES)}, not {self.mask_rule!r}")
        if not 0.0 < self.mask_threshold < 1.0:
            raise UserError(f"--mask-threshold must be in (0, 1), got {self.mask_threshold}")
        if self.temperature <= 0 or self.lam < 0 or self.epochs < 1:
            raise UserError("--temperature must be > 0, --lam ≥ 0 and --epochs ≥ 1")
        if self.dagger_rounds < 0 or self.dagger_rounds >= self.epochs or self.dagger_frames < 1:
            raise UserError("--dagger-rounds must be in [0, epochs) and --dagger-frames ≥ 1")
        if self.dagger_maps is not None and not 0 <= self.dagger_maps <= self.dagger_frames:
            raise UserError(f"--dagger-maps must be in [0, --dagger-frames = {self.dagger_frames}], "
                            f"got {self.dagger_maps}")


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


SHARE_EPS = 1e-8  # keeps the share defined on frames whose gradient vanishes (a saturated log π)


def gradient_penalty(student: PixelPolicy, inputs, region: torch.Tensor, norm: str = "none") -> torch.Tensor:
    """mean over frames of Σ A·(∂g/∂(x/255))², summed over channels and action components.

    norm="share" divides each frame's sum by Σ (∂g/∂(x/255))²: the share of the gradient's energy in A.
    """
    grad = input_gradient(student, inputs, create_graph=True) * 255.0
    sq = grad.pow(2).sum(dim=-3)  # over channels → (N, H, W) or (N, K, H, W)
    if sq.dim() == 4:
        sq = sq.sum(dim=1)
    inside = (sq * region).flatten(1).sum(1)
    if norm == "share":
        inside = inside / (sq.flatten(1).sum(1) + SHARE_EPS)
    return inside.mean()


DAGGER_SEED = 100_000  # student rollouts use seeds far from the label and evaluation seeds


def training_arrays(frames: Dict[str, np.ndarray], names: List[str]) -> Dict[str, np.ndarray]:
    """The arrays the loop trains on: pixels as uint8 (edge_digr.labels.whole_pixels) when they are whole 0–255
    values, as every task's are; the rest float32; `mapped` (which frames have a teacher map; labels written
    before it existed have one on every frame); `saliency`, the maps of the mapped frames only, in frame
    order (map_rows finds a frame's). Labels hold a zero map on every other frame: with maps on 2 % of
    10⁵ Breakout frames those zeros would outweigh the pixels."""
    out = {name: np.ascontiguousarray(whole_pixels(frames[name]) if name == "obs" else
                                      np.asarray(frames[name], dtype=np.float32)) for name in names}
    out["teacher_out"] = np.ascontiguousarray(frames["teacher_out"], dtype=np.float32)
    out["mapped"] = np.asarray(frames.get("mapped", np.ones(len(out["teacher_out"]), bool)), dtype=bool)
    maps = np.asarray(frames["saliency"])
    out["saliency"] = np.ascontiguousarray(maps if out["mapped"].all() else maps[out["mapped"]], dtype=np.float32)
    return out


def map_rows(mapped: np.ndarray) -> np.ndarray:
    """For each frame, its map's row in the compact `saliency` of training_arrays (−1: no map)."""
    return np.where(mapped, np.cumsum(mapped) - 1, -1)


def penalised_frames(mode: str, mapped: np.ndarray) -> np.ndarray:
    """The frames the penalty reaches: those with a teacher map (digr), or all of them (igr needs no map)."""
    return mapped if mode == "digr" else np.ones(len(mapped), bool)


def dagger_epochs(epochs: int, rounds: int) -> List[int]:
    """Epoch counts after which a DAgger round collects frames: spread evenly over training."""
    return [round((k + 1) * epochs / (rounds + 1)) for k in range(rounds)]


def distill(task: Task, train: Dict[str, np.ndarray], cfg: DistillConfig, out: PathLike,
            resume: bool = False, progress: bool = True, teacher: Optional[PixelPolicy] = None,
            device: Optional[torch.device] = None, dist: Distributed = Distributed(),
            bar_line: Optional[int] = None) -> PixelPolicy:
    """Train a student on labelled frames; checkpoints every epoch to `<out>.resume.pt` for --resume.

    On `device` (default CPU); under torchrun (`dist`), each process takes its share of every global batch
    of `cfg.batch_size` frames and DDP averages the gradients over processes (edge_digr.distributed), so
    the run follows the single process's up to float rounding; only rank 0 writes files. `bar_line` puts
    the progress bar on that terminal line, for students trained side by side.

    With `cfg.dagger_rounds`, the student is rolled out during training and the frames it visits are
    labelled by `teacher` (outputs and perturbation maps) and added to the training set (DAgger), so the
    student also learns what to do in the states its own mistakes lead to.
    """
    cfg.validate()
    if cfg.dagger_rounds and teacher is None:
        raise UserError("DAgger rounds need the teacher (--teacher) to label the student's frames")
    if cfg.init == "teacher" and teacher is None:
        raise UserError("--init teacher needs the teacher (--teacher) to start the student from")
    device = device or torch.device("cpu")
    dist.start(device, cfg.batch_size)
    try:
        student = _train(task, train, cfg, out, resume, progress and dist.is_main, teacher, device, dist, bar_line)
    except BaseException:
        dist.stop(wait=False)  # the other ranks fail alike or are ended by torchrun: no barrier to hang on
        raise
    dist.stop()
    return student


def _train(task: Task, train: Dict[str, np.ndarray], cfg: DistillConfig, out: PathLike, resume: bool,
           progress: bool, teacher: Optional[PixelPolicy], device: torch.device, dist: Distributed,
           bar_line: Optional[int]) -> PixelPolicy:
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    student = PixelPolicy(PolicyConfig.for_task(task, cfg.arch)).to(device)
    names = [spec.name for spec in task.inputs]
    data = training_arrays(train, names)
    if cfg.init == "teacher":
        # Up to 2 048 training frames drawn by the seed: the batch whose activations rank the teacher's units.
        rows = np.sort(np.random.default_rng(cfg.seed).permutation(len(data["teacher_out"]))[:2048])
        start_from_teacher(student, teacher, student.inputs_from({name: data[name][rows] for name in names}))
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    keys = list(data)
    added: Dict[str, np.ndarray] = {k: data[k][:0] for k in keys}  # DAgger frames so far

    resume_path = Path(str(out) + ".resume.pt")
    start = 0
    if resume and resume_path.exists():
        state = read_resume_state(resume_path, ("config", "student", "optimizer", "added", "epoch"))
        if state["config"] != asdict(cfg):
            raise UserError(f"{resume_path} was written with other options ({state['config']}); "
                            "resume with the same options or delete it")
        try:
            student.load_state_dict(state["student"])
            optimizer.load_state_dict(state["optimizer"])
            added = {k: state["added"][k].numpy() for k in keys}
            start = int(state["epoch"])
        except (RuntimeError, ValueError, KeyError, AttributeError, TypeError):
            raise UserError(f"{resume_path} does not fit this student; delete it to start over, "
                            "or run without --resume") from None
    elif resume:
        raise UserError(f"nothing to resume: {resume_path} does not exist; start without --resume")
    model = dist.wrap(student, device)  # the student itself, or DDP around it under torchrun

    lam = 0.0 if cfg.mode == "plain" else cfg.lam
    mirror = mirrored_actions(task.train.mirror_actions, device) if cfg.mirror and task.train.mirror_actions else None
    collect_after = dagger_epochs(cfg.epochs, cfg.dagger_rounds)
    bar = tqdm(total=cfg.epochs, initial=start, unit="epoch", desc=f"distill {cfg.mode}", disable=not progress,
               dynamic_ncols=True, position=bar_line)
    full = {k: np.concatenate([data[k], added[k]]) for k in keys}
    penalised, rows_of = penalised_frames(cfg.mode, full["mapped"]), map_rows(full["mapped"])
    for epoch in range(start, cfg.epochs):
        n = len(full["teacher_out"])
        # Each epoch's order depends on (seed, epoch) only, so a resumed run repeats the uninterrupted one.
        rng = np.random.default_rng((cfg.seed, epoch))
        order = rng.permutation(n)
        # Which frames this epoch sees mirrored; drawn after the order, so tasks without a mirror keep theirs.
        flipped = None if mirror is None else torch.from_numpy(rng.random(n) < 0.5).to(device)
        student.train()
        for local, batch in dist.batches(order, cfg.batch_size):
            inputs = tuple(torch.as_tensor(full[name][local], dtype=torch.float32, device=device) for name in names)
            optimizer.zero_grad()
            if not len(local):
                # A short last batch can leave a rank without frames; DDP still needs its forward and
                # backward (every rank joins each gradient all-reduce): a zero loss adds zero gradients.
                (model(*inputs).sum() * 0.0).backward()
                optimizer.step()
                continue
            target = torch.from_numpy(full["teacher_out"][local]).to(device)
            if mirror is not None:
                flip = flipped[torch.from_numpy(local).to(device)]
                inputs = (flip_rows(inputs[0], flip), *inputs[1:])
                target = torch.where(flip[:, None], mirrored_logits(target, mirror), target)
            loss = distillation_loss(model(*inputs), target, task.action.continuous, cfg.temperature)
            # Both terms are means, the distillation loss over the batch's frames and the penalty over those
            # of them with a teacher map (all of them for igr, which needs none); the weights turn DDP's
            # average over ranks into the means over the global batch, also when it splits unevenly.
            total = loss * dist.weight(len(local), len(batch))
            reg = torch.zeros((), device=device)
            here = penalised[local]
            if lam > 0 and here.any():
                rows = local[here]
                if cfg.mode == "igr":
                    region = torch.ones((len(rows),) + tuple(task.obs_shape[1:]), device=device)
                else:
                    region = torch.from_numpy(selection_mask(full["saliency"][rows_of[rows]], cfg.mask_rule,
                                                             cfg.mask_threshold)).to(device)
                if mirror is not None:  # the teacher's map of a mirrored frame is its mirror image
                    region = flip_rows(region, flip[torch.from_numpy(here).to(device)])
                reg = gradient_penalty(model, tuple(x[torch.from_numpy(here)] for x in inputs), region,
                                       cfg.penalty_norm)
                total = total + lam * reg * dist.weight(len(rows), int(penalised[batch].sum()))
            total.backward()
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", reg=f"{reg.item():.4f}", frames=n, refresh=False)
        student.eval()
        if epoch + 1 in collect_after:
            k = collect_after.index(epoch + 1)
            new = None
            if dist.is_main:  # collected once and shared: every rank must train on the same frames
                new = collect(teacher, task, cfg.dagger_frames, DAGGER_SEED + 1000 * k + 10_000 * cfg.seed,
                              progress=False, actor=student)
                # Only digr's penalty reads maps (igr's region is everywhere, plain has none): the others
                # skip them, hundreds of teacher passes a frame.
                add_perturbation_maps(teacher, task, new, progress=False,
                                      maps=cfg.dagger_maps if cfg.mode == "digr" and lam > 0 else 0)
            new = training_arrays(dist.broadcast_object(new), names)
            added = {key: np.concatenate([added[key], new[key]]) for key in keys}
            full = {key: np.concatenate([full[key], new[key]]) for key in keys}
            penalised, rows_of = penalised_frames(cfg.mode, full["mapped"]), map_rows(full["mapped"])
        if dist.is_main:
            with atomic_path(resume_path) as tmp:
                torch.save({"student": to_cpu(student.state_dict()), "optimizer": to_cpu(optimizer.state_dict()),
                            "epoch": epoch + 1, "config": asdict(cfg),
                            "added": {k: torch.from_numpy(v) for k, v in added.items()}}, tmp)
        bar.update(1)
    bar.close()
    student.eval()
    if dist.is_main:
        save_checkpoint(out, student, task.name, "student", distill=asdict(cfg),
                        frames={"labels": int(len(data["teacher_out"])), "dagger": int(len(added["teacher_out"])),
                                "maps": int(full["mapped"].sum())})
        resume_path.unlink(missing_ok=True)
    return student
