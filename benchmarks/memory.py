"""Peak memory per rank of DDP against FSDP: a ~50M-parameter model on 2 CPU ranks (gloo).

    python benchmarks/memory.py [--layers 12] [--width 2048] [--steps 3]

For each strategy it starts ``torchrun --standalone --nproc_per_node=2`` on this file, each
rank trains ``--steps`` Adam steps through ``Trainer.fit`` and reports its peak resident set
(``ru_maxrss``) and its resident set before the model was built (torch imported, the group
joined). The table's "training" column is the difference: what the model, its gradients
and Adam's two moments (plus DDP's gradient buckets, or FSDP's gathered layer) cost a rank.

What the sharding should save: DDP keeps on every rank the parameters P, the gradients P,
Adam's state 2P and DDP's buckets about P (5P); FSDP keeps each a half of P, gradients and
Adam state (2P on 2 ranks) and, transiently, the gathered parameters and gradients of the
layers being run (a few layers). With P = 192 MiB (50.4M float32), about 1 GiB against 0.45 GiB.

The ranks run with ``MALLOC_MMAP_THRESHOLD_=1048576``: glibc otherwise raises its mmap
threshold after the first large free, so the 16 MiB blocks FSDP gathers and frees each layer
stay in the heap and the RSS measures what the allocator kept, not what was live (FSDP then
shows more than DDP). ``--malloc-default`` leaves glibc's default, to see that.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(strategy: str, layers: int, width: int, steps: int, out: str) -> None:
    import torch

    from torchcb import Trainer
    from torchcb.distributed import get_rank, get_world_size, init_from_env

    torch.set_num_threads(1)
    init_from_env(device="cpu")
    before = _rss_mb()
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    parameters = sum(p.numel() for p in net.parameters())
    trainer = Trainer(net, torch.optim.Adam(net.parameters()), loss="mse", device="cpu", strategy=strategy)
    x = torch.randn(8 * steps * get_world_size(), width)
    trainer.fit(x, torch.zeros_like(x), batch_size=8, epochs=1, shuffle=False, verbose=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    with open(os.path.join(out, f"{strategy}_{get_rank()}.json"), "w") as f:
        json.dump({"parameters": parameters, "before_mb": before, "peak_mb": peak}, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--malloc-default", action="store_true", help="leave glibc's dynamic mmap threshold")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.layers, args.width, args.steps, args.out)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not args.malloc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = "1048576"  # large blocks go back to the system when freed
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for strategy in ("ddp", "fsdp"):
            command = [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                os.path.abspath(__file__), "--worker", strategy, "--out", out,
                "--layers", str(args.layers), "--width", str(args.width), "--steps", str(args.steps),
            ]  # fmt: skip
            subprocess.run(command, env=env, check=True, capture_output=True)
            for rank in (0, 1):
                with open(os.path.join(out, f"{strategy}_{rank}.json")) as f:
                    rows.append((strategy, rank, json.load(f)))
    parameters = rows[0][2]["parameters"]
    print(f"{parameters / 1e6:.1f}M parameters ({parameters * 4 / 2**20:.0f} MiB float32), Adam, 2 CPU ranks (gloo)\n")
    print("| strategy | rank | RSS before the model (MiB) | peak RSS (MiB) | training (MiB) | training / P |")
    print("|---|---|---|---|---|---|")
    for strategy, rank, r in rows:
        training = r["peak_mb"] - r["before_mb"]
        print(
            f"| {strategy} | {rank} | {r['before_mb']:.0f} | {r['peak_mb']:.0f} | {training:.0f} | "
            f"{training / (parameters * 4 / 2**20):.2f} |"
        )


if __name__ == "__main__":
    main()
