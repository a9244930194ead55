"""Data-parallel fine-tuning under torch's distributed launcher (torchrun).

    bigbertha finetune --nproc-per-node 4 --data ... --output ...

`bigbertha finetune` with ``--nproc-per-node`` above 1 (a Workflow step with
``workflows.finetune.gpus`` GPUs), or in a Kubeflow Trainer TrainJob pod (whose torch plugin sets
``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``), does not train
itself: it re-runs the same command line once per process under torchrun
(``torch.distributed.run``, the launcher Kubeflow Trainer's torch runtime runs), and each process
trains on its share of every batch (trl's SFTTrainer is DDP-aware). Process 0 alone writes: the
MLflow run, the adapter, its lineage and the report. torchrun reads the ``PET_*`` variables as its
arguments (torch/distributed/run.py ``get_args_parser``: every option has a ``PET_`` env default),
so one pod of a multi-node TrainJob joins the others with no flag of ours.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

log = logging.getLogger(__name__)

# Set by the launcher in each process it starts (torch.distributed.run, elastic agent).
_WORKER_VARS = ("LOCAL_RANK", "WORLD_SIZE", "RANK")


def launched() -> bool:
    """Whether this process is one of torchrun's workers."""
    return all(name in os.environ for name in _WORKER_VARS)


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if launched() else 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def is_main() -> bool:
    """Process 0 writes what the run produces; the others only train."""
    return rank() == 0


def in_trainjob() -> bool:
    """A Kubeflow Trainer node pod: its torch plugin set the launcher's PET_* variables."""
    return "PET_NNODES" in os.environ and "PET_MASTER_ADDR" in os.environ


def needs_launch(nproc_per_node: int) -> bool:
    """Whether `bigbertha finetune` must start workers rather than train itself."""
    return not launched() and (nproc_per_node > 1 or in_trainjob())


def launcher_args(nproc_per_node: int, argv: Sequence[str]) -> list[str]:
    """torchrun's arguments: one node on its own (a free local rendezvous port), or, in a
    TrainJob, the nodes and ranks of its PET_* variables; no restart of a failed worker (the
    Workflow's retryStrategy owns retries, and knows which exits are final)."""
    args = ["--max-restarts", "0"]
    if in_trainjob():
        if nproc_per_node > 1:
            args += ["--nproc-per-node", str(nproc_per_node)]
    else:
        args += ["--standalone", "--nproc-per-node", str(nproc_per_node)]
    return [*args, "--module", "bigbertha", *argv]


def launch(nproc_per_node: int, argv: Sequence[str]) -> int:
    """Run `bigbertha <argv>` in `nproc_per_node` processes; the exit code of the first that
    failed (exit 3, bad data, stays 3 so the Workflow does not retry it), else 0."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(launcher_args(nproc_per_node, argv))
    log.info(
        "fine-tuning in %s process(es) per node on %s node(s) under torchrun",
        args.nproc_per_node,
        args.nnodes,
    )
    try:
        run(args)
    except ChildFailedError as exc:
        failed_rank, failure = exc.get_first_failure()
        log.error("fine-tuning process %d failed with exit code %d", failed_rank, failure.exitcode)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0
