"""Data-parallel sleep training with PyTorch's own engine: torchrun starts the ranks, torch.distributed
(gloo on CPU, NCCL on CUDA) moves the gradients.

``sage-hl-sleep --nproc-per-node N`` re-launches itself under ``python -m torch.distributed.run``
(``torchrun``), as GR00T's fine-tuning script does; a multi-node job is the same torchrun line with
``--nnodes``, ``--node-rank`` and ``--rdzv-endpoint`` (README). Inside, each rank:

- reads only its shard of the training episodes (``BagDataset(shard=(rank, world))``: episode k of
  the train split belongs to rank ``k % world``), so reading scales with the ranks;
- fits the normaliser on every rank's statistics (``gather``: identical on all ranks);
- samples ``batch_size / world`` sequences per step from its shard with its own generator, and the
  gradients are averaged across ranks before clipping and the optimiser step (``average_gradients``:
  one flat all-reduce; the same update a single process makes from a batch of ``batch_size``, so
  the same global batch learns the same within sampling noise);
- lets rank 0 alone evaluate, write checkpoints, reports, progress and the trainer state (the other
  ranks' sampler states travel to it with ``gather``, so a DDP resume is bit-identical).

The loss functions call the model's submodules directly, not ``model.forward``, which is what
``DistributedDataParallel``'s gradient hooks need; averaging the gradients after ``backward`` is the
same synchronous data-parallel SGD. A rank that dies ends the job: torchrun stops the others, and
every collective has a timeout (``timeout_s``, 30 min: rank 0's final evaluation runs while the
others wait) instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Dist", "average_gradients", "torchrun_command"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env(device: torch.device, timeout_s: float = 1800.0) -> Dist:
        """Join the job torchrun set up (``WORLD_SIZE`` > 1), else a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return Dist()
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over ranks (a new tensor)."""
        if not self.enabled:
            return x.clone()
        import torch.distributed as dist

        y = x.detach().clone()
        dist.all_reduce(y)
        return y / self.world

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def average_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """In place: every parameter's gradient becomes the mean over ranks (one flat all-reduce).

    A parameter without a gradient on some rank counts as zero there; one without a gradient on
    every rank keeps ``None`` (Adam then skips it, as in a single process)."""
    if not d.enabled:
        return
    import torch.distributed as dist

    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    used = [p for p, h in zip(params, has.tolist(), strict=True) if h > 0]
    if not used:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in used])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for p in used:
        n = p.numel()
        g = flat[offset:offset + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        offset += n


def torchrun_command(nproc_per_node: int, argv: list[str], nnodes: int = 1, rdzv_endpoint: str = "",
                     rdzv_id: str = "sage_sleep") -> list[str]:
    """The ``python -m torch.distributed.run`` line that runs ``sage-hl-sleep argv`` on N ranks per
    node (``nnodes`` > 1: every node runs the same line; c10d rendezvous at ``rdzv_endpoint``)."""
    if nproc_per_node < 1 or nnodes < 1:
        raise ValueError(f"--nproc-per-node and --nnodes must be >= 1, got {nproc_per_node} and {nnodes}")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc_per_node}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the rendezvous every node joins)")
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}",
                f"--rdzv-id={rdzv_id}"]
    else:
        cmd.append("--standalone")
    return cmd + ["-m", "sage_hl_ros.tools.sleep_cli", *argv]
