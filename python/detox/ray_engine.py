"""What every ``--engine ray`` command shares (``detox rewrite``, ``detox eval``, ``detox demo``,
``detox cmd-synthesize``): joining or starting a Ray cluster, and running a list of work items
through a Ray Data ``map_batches`` actor pool.

- :func:`require_ray`: Ray Data, or one clear line (:class:`RayMissing`, exit 2) saying how to
  install it.
- :func:`ray_session`: a context manager; it joins the cluster at ``address`` (or ``RAY_ADDRESS``)
  when one is given, else starts a local one with a CPU per worker, and shuts down what it started.
  The actors get this process's ``PYTHONPATH``, thread settings and ``DETOX_*`` variables.
- :func:`map_actors`: every item (a JSON-able dict) through ``map_batches`` with a fixed-size pool
  of actors of a given class (one per GPU where the cluster has GPUs, else one per CPU worker),
  one item per call; yields the results as they finish, in any order.

An actor class takes its constructor keyword arguments once (loading its models then) and is
called with a batch ``{"item": [json, ...]}``; it returns ``{"result": [json, ...]}``
(:func:`actor_call` does that wrapping).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Callable, Iterator

from .errors import UserError

__all__ = ["RayMissing", "actor_call", "actor_device", "actor_gpus", "actor_threads", "check_device_spec", "cluster_gpus",
           "default_workers", "map_actors", "ray_session", "require_ray"]

_ENV_KEYS = ("PYTHONPATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TRITON_INTERPRET", "HF_HOME", "HF_HUB_OFFLINE",
             "TRANSFORMERS_OFFLINE")


class RayMissing(UserError):
    """``--engine ray`` without Ray Data installed."""


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayMissing("--engine ray needs Ray Data: pip install 'detox-kernels[ray]' (or use --engine local)") \
            from None
    return ray


def _runtime_env() -> dict:
    env = {k: os.environ.get(k, "") for k in _ENV_KEYS}
    env["OMP_NUM_THREADS"] = env["OMP_NUM_THREADS"] or "1"
    env["MKL_NUM_THREADS"] = env["MKL_NUM_THREADS"] or env["OMP_NUM_THREADS"]
    env.update({k: v for k, v in os.environ.items() if k.startswith("DETOX_")})
    return {"env_vars": {k: v for k, v in env.items() if v != "" or k in ("PYTHONPATH", "TRITON_INTERPRET")}}


def actor_threads() -> int:
    """Torch threads of each CPU actor: ``OMP_NUM_THREADS`` (default 1). A single-process run with
    the same thread count gives bit-identical numbers."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS") or 1))
    except ValueError:
        return 1


def cluster_address(address: str | None = None) -> str | None:
    return address or os.environ.get("RAY_ADDRESS") or None


def default_workers(gpus: bool | None = None) -> int:
    """Actors when ``--ray-workers`` is not given: one per GPU of the cluster (when the actors use
    GPUs: ``gpus``, default whether the cluster has any), else one per CPU but one (left to Ray
    Data's own tasks)."""
    import ray

    res = ray.cluster_resources()
    n_gpus = int(res.get("GPU", 0)) if gpus is None or gpus else 0
    return n_gpus or max(1, int(res.get("CPU", 1)) - 1)


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def actor_gpus(device=None, *, strict: bool = True) -> bool:
    """Whether the actors of a run with ``device`` (``--device``: auto, cpu, cuda, cuda:N) take a
    GPU each (inside :func:`ray_session`): ``cuda``/``cuda:N``, or ``auto`` on a cluster with GPUs;
    ``cpu`` keeps them off the GPUs. An actor sees only the GPU Ray gives it, as ``cuda``.
    ``strict``: CUDA asked for on a cluster without GPUs is a :class:`~detox.devices.DeviceError`
    (else the actors run on the CPU)."""
    spec = "auto" if device is None else str(device).strip().lower()
    gpus = cluster_gpus()
    if spec.startswith("cuda"):
        if not gpus and strict:
            from .devices import DeviceError

            raise DeviceError(f"--device {device}: the Ray cluster has no GPUs (use --device cpu or auto)")
        return gpus > 0
    return spec == "auto" and gpus > 0


def check_device_spec(device=None, dtype=None) -> None:
    """A ``device`` / ``dtype`` that the actors resolve on their own machines (the driver's may have
    no GPU) checked for being one of the names: a :class:`~detox.devices.DeviceError` otherwise."""
    from .devices import DEVICE_CHOICES, DeviceError, resolve_dtype

    spec = "auto" if device is None else str(device).strip().lower()
    if not (spec in ("auto", "cpu", "cuda") or (spec.startswith("cuda:") and spec[5:].isdigit())):
        raise DeviceError(f"device {device}: unknown device; use one of {DEVICE_CHOICES}")
    resolve_dtype(dtype, "cpu", what="dtype")


@contextlib.contextmanager
def ray_session(workers: int | None = None, address: str | None = None) -> Iterator[Any]:
    """Ray, initialised: on the cluster at ``address`` / ``RAY_ADDRESS`` if given, else a local one
    with ``workers`` CPUs for the actors (default: this machine's) plus one for Ray Data's own tasks.
    Shuts Ray down on exit if it was started here."""
    ray = require_ray()
    started = False
    if not ray.is_initialized():
        address = cluster_address(address)
        if address:
            ray.init(address=address, runtime_env=_runtime_env(), log_to_driver=False)
        else:
            n = workers if workers else (os.cpu_count() or 1)
            ray.init(num_cpus=n + 1, runtime_env=_runtime_env(), log_to_driver=False, include_dashboard=False)
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def map_actors(items: list[dict], actor_cls: type, ctor_kwargs: dict, *, workers: int | None = None,
               gpus: bool | None = None) -> Iterator[dict]:
    """Run every item through a pool of ``actor_cls`` actors (inside :func:`ray_session`); yields
    each item's result as it finishes. One block per item, so the actors share the items out one at
    a time; a GPU per actor when ``gpus`` (default: where the cluster has GPUs; see
    :func:`actor_gpus`), at most as many actors as GPUs."""
    import ray

    if not items:
        return
    gpus = cluster_gpus() if gpus is None or gpus else 0
    n = workers or default_workers(gpus > 0)
    if gpus:
        n = min(n, gpus)
    n = max(1, min(n, len(items)))
    ds = ray.data.from_items([{"item": json.dumps(it, ensure_ascii=False)} for it in items],
                             override_num_blocks=len(items))
    ds = ds.map_batches(actor_cls, fn_constructor_kwargs=ctor_kwargs, batch_size=1,
                        compute=ray.data.ActorPoolStrategy(size=n), num_cpus=0 if gpus else 1,
                        num_gpus=1 if gpus else 0)
    for row in ds.iter_rows():
        yield json.loads(row["result"])


def actor_call(fn: Callable[[dict], dict], batch: dict) -> dict:
    """An actor's ``__call__``: ``fn`` on each JSON item of the batch, results JSON-encoded."""
    import numpy as np

    return {"result": np.array([json.dumps(fn(json.loads(x)), ensure_ascii=False) for x in batch["item"]],
                               dtype=object)}


def actor_device() -> str:
    """``cuda`` in an actor that Ray gave a GPU, else ``cpu``; CPU actors set their torch threads."""
    import torch

    try:
        import ray

        has_gpu = bool(ray.get_gpu_ids())
    except Exception:
        has_gpu = False
    if has_gpu and torch.cuda.is_available():
        return "cuda"
    torch.set_num_threads(actor_threads())
    return "cpu"


# --------------------------------------------------------------------------------------------------
# the command-line options of eval, demo and cmd-synthesize


def add_engine_options(p) -> None:
    """``--engine local|ray`` and ``--ray-workers N`` (the cluster: ``RAY_ADDRESS``, else a local one)."""
    from .cli_types import positive_int

    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this process; ray: Ray Data actors, one per GPU (else per CPU worker), on the "
                        "cluster at RAY_ADDRESS or a local one; the same output (default: local)")
    p.add_argument("--ray-workers", type=positive_int, default=None,
                   help="--engine ray: actors, >= 1 (default: one per GPU of the cluster, else one per CPU but one)")


def engine_kwargs(args) -> dict:
    """The engine keyword arguments of ``run_eval`` / ``synthesize`` from the parsed options."""
    if args.engine == "ray":
        require_ray()  # one line before anything is loaded
    elif args.ray_workers is not None:
        raise UserError("--ray-workers needs --engine ray")
    return {"engine": args.engine, "ray_workers": args.ray_workers}
