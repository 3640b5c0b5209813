"""Run plumbing of the four train.py: the errors they raise on purpose, seeding, device and autocast,
optional torchrun/DDP, a resumable sharded sampler, RNG states for checkpoints, the non-finite check."""

from __future__ import annotations

import datetime
import hashlib
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


class DataError(ValueError):
    """Bad input data: the message names the file, line or key at fault."""


class ConfigMismatchError(ValueError):
    """A checkpoint was written with a configuration that contradicts the current one."""


class RunDirError(OSError):
    """The run folder cannot be written (missing permission, no free space)."""


class DeviceError(ValueError):
    """A --device this machine does not have."""


class NonFiniteLossError(FloatingPointError):
    """A loss component became NaN or Inf; the message names the component(s)."""


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file (a leading BOM is dropped). A file in another encoding raises DataError
    naming the file, line and byte, instead of a UnicodeDecodeError from deep inside a reader."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {data[e.start]:#04x} at offset {e.start}); "
                        f"save the file as UTF-8") from e


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """`worker_init_fn`: numpy/python seeds from torch's per-worker seed, or all draw the same augmentations."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, sample index): augmentations drawn from it are
    the same whatever the number of workers and across a resume (exact resume)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        index, count = int(name[5:] or 0) if ":" in name else 0, torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"--device {name} asked for, but this machine has {count} CUDA device(s)")
    return torch.device(name)


AMP_MODES = ("auto", "bf16", "fp16", "off")  # the values of --amp / --no-amp


def autocast_dtype(device: torch.device, amp: bool | str = True) -> torch.dtype | None:
    """The autocast dtype for `--amp`: None (plain fp32) on CPU or with amp off; on CUDA bf16 where
    supported else fp16 for "auto" (or True, as older checkpoints store it), or the one asked for."""
    if amp in (False, None, "off") or device.type != "cuda":
        return None
    if amp not in (True, *AMP_MODES):
        raise ValueError(f"--amp {amp!r}: expected one of {', '.join(AMP_MODES)}")
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise RuntimeError("--amp bf16: this GPU has no bfloat16 support; use --amp fp16")
    return torch.bfloat16 if amp == "bf16" or torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast when dtype is set, a no-op otherwise."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only; for bf16/fp32 a disabled pass-through, so the loop is written once."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")


def setup_distributed(device_name: str = "auto") -> DistInfo:
    """Single process unless launched by torchrun (RANK set); then NCCL, one GPU per process, or gloo on CPU."""
    device = pick_device(device_name)
    if "RANK" not in os.environ:
        return DistInfo(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # torch.distributed.nn.functional binds `group=group.WORLD` as default arguments when first imported
        # (DDP imports it lazily). Imported after init, it pins the default group for the life of the
        # interpreter: destroy_process_group() cannot free it, its gloo threads are never joined, and the
        # process aborts at exit ("terminate called without an active exception"). Imported first, it binds None.
        import torch.distributed.nn.functional as _nn_functional  # noqa: F401  (an alias: no local `torch`)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=10))
    return DistInfo(rank=rank, world_size=world, device=device)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return world_size() == 1 or dist.get_rank() == 0


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap_ddp(model: torch.nn.Module, info: DistInfo, **kwargs) -> torch.nn.Module:
    """The model in DistributedDataParallel under torchrun (one device per process), else itself.
    Delete the wrapper before cleanup_distributed(): it holds the process group."""
    if info.world_size == 1:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DDP and torch.compile (checkpoints hold unwrapped weights)."""
    model = getattr(model, "_orig_mod", model)  # compile_model's wrapper
    return model.module if hasattr(model, "module") else model


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """A per-rank tensor concatenated along dim 0 over all ranks, shards of unequal length allowed:
    evaluation metrics are computed on the gathered whole, never on rank 0's shard alone."""
    if world_size() == 1:
        return tensor
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    padded = tensor.new_zeros((int(max(s.item() for s in sizes)), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def assert_replicas_in_sync(model: torch.nn.Module) -> None:
    """Under DDP, check that every rank ends with the same parameters (one all_gather of a
    checksum). A mismatch means a rank skipped a step or an unsynchronised update crept in."""
    if world_size() == 1:
        return
    flat = torch.cat([p.detach().double().flatten() for p in unwrap(model).parameters()])
    position = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device) / flat.numel()
    checksum = torch.stack([flat.sum(), (flat * position).sum()])  # the second sum also catches swaps
    sums = [torch.zeros_like(checksum) for _ in range(world_size())]
    dist.all_gather(sums, checksum)
    if any(not torch.equal(sums[0], s) for s in sums[1:]):
        raise RuntimeError(f"DDP replicas diverged: parameter checksums per rank {[s.tolist() for s in sums]}")


class EpochSampler(torch.utils.data.Sampler):
    """Deterministic, resumable, optionally sharded sampler: the order of an epoch depends only on (seed, epoch),
    each rank takes a disjoint shard (rank::world_size). `drop_last` makes all shards the same length (training);
    without it they may differ by one (evaluation, then `gather_cat`). `start_batch` skips a resume's seen batches."""

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True):
        if num_samples == 0:
            raise DataError("the split is empty: no samples to iterate over")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.drop_last, self.epoch, self.start_batch = drop_last, 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        if not self.drop_last:
            return order[self.rank :: self.world_size]
        shard = order[: self.num_samples // self.world_size * self.world_size][self.rank :: self.world_size]
        return shard[: len(shard) // self.batch_size * self.batch_size]  # whole batches, equal on every rank

    def batches_per_epoch(self) -> int:
        return math.ceil(len(self._indices()) / self.batch_size)  # whole batches already under drop_last

    def __iter__(self):
        return iter(self._indices()[self.start_batch * self.batch_size :])

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start_batch * self.batch_size)


def make_loader(dataset, sampler: EpochSampler, workers: int, seed: int, epoch: int = 0,
                collate_fn=None) -> torch.utils.data.DataLoader:
    """The one DataLoader rule of every project: batches from the sampler's order, and a generator
    from (seed, epoch) that seeds only the workers (the global RNG stays untouched: exact resume)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=sampler.batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
        worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(seed * 1000 + epoch),
        pin_memory=torch.cuda.is_available())


def decay_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices get weight decay; biases, norms, embeddings/tokens, learned loss weights do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            matrix = p.ndim >= 2 and not any(key in name for key in ("pos", "cls", "token", "bias", "norm"))
            (decay if matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def rng_state() -> dict:
    """Every generator's state in types a weights_only checkpoint accepts (numpy's keys as a tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                    cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_finite(components: dict[str, torch.Tensor], step: int | None = None) -> None:
    """Stop the run, naming every loss component that is NaN or Inf (never mask them); one host sync
    per call: all components are stacked and tested at once."""
    values = torch.stack([value.detach().float().reshape(()) for value in components.values()])
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = [f"{n}={values[i].item()}" for i, n in enumerate(components) if not finite[i]]
        where = f" at step {step}" if step is not None else ""
        raise NonFiniteLossError(f"non-finite loss component(s){where}: {', '.join(bad)}")


def compile_model(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """`--compile`: torch.compile of the module the training loop calls, after the DDP wrap as torch's
    DDP + compile notes ask (the graph is split at the gradient buckets, so the all-reduce still overlaps
    the backward: torch/_dynamo/backends/distributed.py, class DDPOptimizer). unwrap() sees through it, so
    checkpoints hold the bare module's keys (no `_orig_mod.`) and resume with or without --compile."""
    return torch.compile(model) if enabled else model
