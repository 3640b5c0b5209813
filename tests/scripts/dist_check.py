"""Launched by tests/test_common_runtime.py under `torchrun --nproc_per_node 2` on CPU.

Exercises common/runtime's distributed helpers and writes a JSON report from rank 0 only."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root, for `common`

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from common.runtime import (
    EpochSampler,
    all_reduce_mean,
    assert_replicas_in_sync,
    cleanup_distributed,
    gather_cat,
    is_main,
    setup_distributed,
)

out_dir = Path(sys.argv[1])
info = setup_distributed("cpu")
assert info.world_size == 2

# Sharded sampler: every rank gets a disjoint shard; together they cover the epoch once.
sampler = EpochSampler(12, batch_size=2, seed=3, rank=info.rank, world_size=info.world_size, drop_last=True)
sampler.set_epoch(1)
shard = torch.tensor(list(sampler))
all_indices = gather_cat(shard)

# Uneven evaluation shards (rank 0: 3 rows, rank 1: 2 rows) gathered whole, in rank order.
local = torch.arange(3 - info.rank, dtype=torch.float32) + 10 * info.rank
gathered = gather_cat(local)
mean = all_reduce_mean(torch.tensor([float(info.rank)]))

# One DDP step: parameters must stay identical on both ranks.
torch.manual_seed(0)
model = DDP(torch.nn.Linear(4, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(8, 4, generator=torch.Generator().manual_seed(info.rank))  # different data per rank
model(x).pow(2).mean().backward()
opt.step()
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
others = [torch.zeros_like(flat) for _ in range(info.world_size)]
dist.all_gather(others, flat)
assert_replicas_in_sync(model)
diverged = False
with torch.no_grad():
    model.module.bias += info.rank  # make rank 1 differ on purpose
try:
    assert_replicas_in_sync(model)
except RuntimeError:
    diverged = True

if is_main():
    (out_dir / "report.json").write_text(json.dumps({
        "indices": all_indices.tolist(),
        "gathered": gathered.tolist(),
        "mean": mean.item(),
        "params_equal": bool(torch.equal(others[0], others[1])),
        "divergence_detected": diverged,
    }))
(out_dir / f"rank{info.rank}_was_main.txt").write_text(str(is_main()))
del model, opt
cleanup_distributed()
# The group must really be gone: gloo worker threads still alive at interpreter exit can release a
# tensor without the GIL and abort the process ("terminate called without an active exception").
threads = [(task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir()]
(out_dir / f"rank{info.rank}_threads.json").write_text(json.dumps(threads))
