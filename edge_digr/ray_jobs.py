"""Scale-out on an existing engine, Ray (the `ray` extra): perturbation maps as tasks over chunks of frames,
and study jobs (one per configuration) with a resource spec. No scheduler of our own: Ray places, retries
and cancels the tasks; this module only submits them and gathers the results in submission order.

Ray is imported lazily: without the extra, `--ray` is a one-line install hint (exit 2), and the rest of
edge-digr never needs it (the Jetson never installs it).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edge_digr.core.errors import UserError, missing_dependency
from edge_digr.core.params import RAY_LOCAL as LOCAL
from edge_digr.core.perturbation import PerturbationConfig

MAX_RETRIES = 3  # attempts after a worker dies (a lost node, an OOM kill); Ray re-runs the task elsewhere


def import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise missing_dependency("ray", "ray", "--ray") from None
    return ray


def connect(address: str) -> Any:
    """The ray module, connected: a local instance on this machine's cores (`local`), or an existing
    cluster (`auto`, `ray://HOST:10001`, `HOST:6379`). A connection made earlier in the process is reused."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    # Options that configure a new instance are refused by ray.init when it joins an existing cluster.
    options = dict(include_dashboard=False) if address == LOCAL else {}
    try:
        ray.init(address=address, log_to_driver=False, **options)
    except (ConnectionError, ValueError) as exc:  # ValueError: a malformed address, or ray:// without ray[client]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"--ray {address}: no Ray cluster there ({first}); start one with `ray start --head` "
                        "or pass --ray alone for a local instance") from None
    return ray


def gather(ray: Any, refs: Sequence[Any], desc: str, progress: bool = True
           ) -> Tuple[List[Any], List[Optional[BaseException]]]:
    """(results, errors) of `refs` in submission order, with a progress bar over finished tasks.

    A task that failed for good (after its retries) leaves None in `results` and its exception in `errors`;
    the others' results are kept. Ctrl-C cancels every task not yet finished, then propagates."""
    from tqdm import tqdm

    index = {ref: i for i, ref in enumerate(refs)}
    results: List[Any] = [None] * len(refs)
    errors: List[Optional[BaseException]] = [None] * len(refs)
    pending = list(refs)
    try:
        with tqdm(total=len(refs), desc=desc, unit="task", disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        results[index[ref]] = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        errors[index[ref]] = exc
                    bar.update(1)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return results, errors


def first_line(exc: BaseException) -> str:
    """A Ray error's cause in one line (RayTaskError wraps the worker's traceback)."""
    cause = getattr(exc, "cause", None) or exc
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[-1].strip() if lines else ''}"


# ---------------------------------------------------------------------------------- perturbation maps
def policy_weights(policy: Any) -> Dict[str, Any]:
    """What a worker needs to rebuild the policy: its config and CPU state dict (tensors, not a module)."""
    return {"policy": policy.cfg.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in policy.state_dict().items()}}


def label_chunk(weights: Dict[str, Any], inputs: Dict[str, np.ndarray], config: PerturbationConfig) -> np.ndarray:
    """Perturbation maps of one chunk of frames, on a Ray worker (CPU), exactly as the serial path makes them."""
    from edge_digr.policies import PixelPolicy, PolicyConfig
    from edge_digr.saliency import Perturbation

    policy = PixelPolicy(PolicyConfig.from_dict(weights["policy"]))
    policy.load_state_dict(weights["state_dict"])
    policy.eval()
    return Perturbation(policy, config).attribute(policy.inputs_from(inputs))


Work = Callable[[Dict[str, Any], Dict[str, np.ndarray], PerturbationConfig], np.ndarray]


def ray_perturbation_maps(policy: Any, names: Sequence[str], data: Dict[str, np.ndarray], config: PerturbationConfig,
                          address: str, chunk: int = 8, progress: bool = True, work: Work = label_chunk) -> np.ndarray:
    """(N, H, W) perturbation maps of `data`'s frames, one Ray task per `chunk` frames.

    The weights go into the object store once (ray.put) and every task reads them from there; `work` is
    the function each task runs (label_chunk; tests wrap it to inject faults)."""
    ray = connect(address)
    weights = ray.put(policy_weights(policy))
    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(work)
    frames = len(data[names[0]])
    refs = [task.remote(weights, {n: data[n][start:start + chunk] for n in names}, config)
            for start in range(0, frames, chunk)]
    maps, errors = gather(ray, refs, "perturbation saliency (ray)", progress)
    failed = [i for i, e in enumerate(errors) if e is not None]
    if failed:
        raise UserError(f"{len(failed)} of {len(refs)} labelling tasks failed after {MAX_RETRIES} retries "
                        f"(first: frames {failed[0] * chunk}-{min(frames, (failed[0] + 1) * chunk) - 1}, "
                        f"{first_line(errors[failed[0]])}); nothing was written")
    return np.concatenate(maps).astype(np.float32)


# ---------------------------------------------------------------------------------------- study jobs
def add_ray_arguments(parser: Any, jobs: str, cpus: float) -> None:
    """The study scripts' `--ray [ADDRESS]` and `--cpus-per-job` (argparse), defined once."""
    parser.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                        help=f"Run the {jobs} as Ray tasks (alone: a local instance; auto, ray://HOST:10001).")
    parser.add_argument("--cpus-per-job", type=float, default=cpus, help="CPUs Ray reserves for each job.")


def run_jobs(job: Callable[..., Any], configs: Sequence[Dict[str, Any]], address: Optional[str],
             num_cpus: float = 1, progress: bool = True) -> Tuple[List[Any], List[Tuple[Dict[str, Any], str]]]:
    """(results, failures): `job(**config)` for every config, as Ray tasks needing `num_cpus` each when
    `address` is given, else one after the other in this process.

    A failed job becomes a (config, one-line reason) failure and None in `results`; the others' results
    are kept, in the order of `configs`."""
    if address is None:
        results, failures = [], []
        for config in configs:
            try:
                results.append(job(**config))
            except Exception as exc:  # one failed configuration must not lose the others' results
                results.append(None)
                failures.append((config, f"{type(exc).__name__}: {exc}".splitlines()[0]))
        return results, failures
    ray = connect(address)
    # A job that dies with its worker is run again (max_retries); one that raises is a failed configuration.
    task = ray.remote(num_cpus=num_cpus, max_retries=MAX_RETRIES)(job)
    refs = [task.remote(**config) for config in configs]
    results, errors = gather(ray, refs, "study jobs (ray)", progress)
    failures = [(config, first_line(err)) for config, err in zip(configs, errors) if err is not None]
    return results, failures
