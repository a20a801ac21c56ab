"""torchcb against a hand-written PyTorch loop: throughput ratio, final loss, peak memory.

    python benchmarks/bench.py                 # W1 and W2, 21 alternating repeats
    python benchmarks/bench.py --repeats 31 --workloads W1
    python benchmarks/bench.py --device cuda   # on a GPU

Every run is its own process, forked from one that has imported torch and torchcb, so
imports are not timed (what torchcb imports or builds lazily, at first use, is). Each
repeat runs every variant once, in a shuffled order (seeded). Throughput
is training samples per second. A run's ratio is its throughput over the hand loop's in the
same repeat, so a slow minute of the machine hits both sides; the table gives the median
ratio and the range over the repeats. The final loss of every torchcb run must equal the
hand loop's (same seed) to 1e-6.

Workloads (one thread):
    W1  MLP 32-64-10, 16384 samples, batch 32, 3 epochs   (overhead-bound)
    W2  MLP 256-1024-1024-10, 8192 samples, batch 256, 2 epochs   (compute-bound)
Variants:
    hand      the hand-written loop (in-memory tensors, device permutation, Adam)
    bare      Trainer.fit, verbose=0
    verbose1  Trainer.fit, verbose=1, stdout a pipe (the default callbacks)
    all       verbose=0 with every seed callback: EarlyStopping, ModelCheckpoint (each epoch),
              CSVLogger, ReduceLROnPlateau, LearningRateScheduler, TensorBoard (per epoch, no
              graph), TerminateOnNaN, a JSON-lines LambdaCallback, RemoteMonitor to a local server
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time

WORKLOADS = {
    "W1": {"sizes": [32, 64, 10], "samples": 16384, "batch": 32, "epochs": 3},
    "W2": {"sizes": [256, 1024, 1024, 10], "samples": 8192, "batch": 256, "epochs": 2},
}
VARIANTS = {"W1": ["hand", "bare", "verbose1", "all"], "W2": ["hand", "bare"]}
TARGETS = {("W1", "bare"): 0.97, ("W1", "all"): 0.90, ("W2", "bare"): 0.99}


# ----------------------------------------------------------------------------- one run


def _model(sizes, device):
    import torch

    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).to(device)


def _hand_loop(net, optimizer, x, y, batch, epochs):
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    for _ in range(epochs):
        net.train()
        order = torch.randperm(n, device=x.device)
        losses = []
        for start in range(0, n, batch):
            index = order[start : start + batch]
            xb, yb = x[index], y[index]
            loss = F.cross_entropy(net(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        # one read per epoch, as a careful hand loop does (the workloads' batches are all full)
        epoch_loss = torch.stack(losses).double().mean().item()
    return epoch_loss


def _seed_callbacks(directory, server_root):
    import json as json_module

    from torchcb.callbacks import (
        CSVLogger,
        EarlyStopping,
        LambdaCallback,
        LearningRateScheduler,
        ModelCheckpoint,
        ReduceLROnPlateau,
        RemoteMonitor,
        TensorBoard,
        TerminateOnNaN,
    )

    json_log = open(os.path.join(directory, "loss_log.json"), "w", buffering=1)  # noqa: SIM115
    return [
        EarlyStopping(monitor="loss", patience=100),
        ModelCheckpoint(os.path.join(directory, "weights.{epoch:02d}.pt")),
        CSVLogger(os.path.join(directory, "log.csv")),
        ReduceLROnPlateau(monitor="loss", patience=100),
        LearningRateScheduler(lambda epoch, lr: lr),
        TensorBoard(os.path.join(directory, "tb"), write_graph=False),
        TerminateOnNaN(),
        LambdaCallback(
            on_epoch_end=lambda epoch, logs: json_log.write(
                json_module.dumps({"epoch": epoch, "loss": logs["loss"]}) + "\n"
            ),
            on_train_end=lambda logs: json_log.close(),
        ),
        RemoteMonitor(root=server_root, send_as_json=True),
    ]


def run_one(workload: str, variant: str, device: str, server_root: str) -> dict:
    import torch

    torch.set_num_threads(1)
    spec = WORKLOADS[workload]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(spec["samples"], spec["sizes"][0], generator=generator).to(device)
    y = torch.randint(0, spec["sizes"][-1], (spec["samples"],), generator=generator).to(device)
    torch.manual_seed(0)
    net = _model(spec["sizes"], device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    directory = tempfile.mkdtemp(prefix="torchcb-bench-")
    if variant != "hand":
        from torchcb import Trainer

        trainer = Trainer(net, optimizer, loss="sparse_categorical_crossentropy", device=device)
        callbacks = []
        if variant == "all":
            # a one-off import (TensorBoard's writer) is not training time
            import torch.utils.tensorboard  # noqa: F401

            callbacks = _seed_callbacks(directory, server_root)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if variant == "hand":
        final_loss = _hand_loop(net, optimizer, x, y, spec["batch"], spec["epochs"])
    else:
        history = trainer.fit(
            x,
            y,
            batch_size=spec["batch"],
            epochs=spec["epochs"],
            verbose=1 if variant == "verbose1" else 0,
            callbacks=callbacks,
        )
        final_loss = history.history["loss"][-1]
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    shutil.rmtree(directory, ignore_errors=True)
    return {"seconds": elapsed, "samples": spec["samples"] * spec["epochs"], "loss": final_loss, "peak_mib": peak}


# ----------------------------------------------------------------------------- the runner


def _serve_locally():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _run_in_child(connection, workload: str, variant: str, device: str, server_root: str) -> None:
    if variant == "verbose1":  # the progress bar writes to a pipe, as when a run's output is piped to a file
        _, write_end = os.pipe()  # a few lines per run: far less than a pipe holds, so nothing needs to read it
        sys.stdout = os.fdopen(write_end, "w")
    connection.send(run_one(workload, variant, device, server_root))


def _run(context, workload: str, variant: str, device: str, server_root: str) -> dict:
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_run_in_child, args=(sender, workload, variant, device, server_root))
    process.start()
    sender.close()
    try:
        return receiver.recv()
    except EOFError:
        raise SystemExit(f"the {workload} {variant} run failed (exit code {process.exitcode})") from None
    finally:
        process.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", help="run only these variants (the hand loop always runs)")
    args = parser.parse_args()

    # Every run is a fresh process forked from a server that has imported torch and torchcb:
    # the runs start in a second, not in the time torch takes to import.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torchcb", "torchcb.callbacks"])
    server, root = _serve_locally()
    failures = []
    try:
        rows = []
        for workload in args.workloads:
            variants = [v for v in VARIANTS[workload] if v == "hand" or not args.variants or v in args.variants]
            results: dict[str, list[dict]] = {v: [] for v in variants}
            for repeat in range(-1, args.repeats):  # repeat -1 warms the machine up and is not counted
                # a shuffled order each repeat (seeded, so reproducible): a run can be slowed or
                # sped up by the one before it, and no variant always follows the same one
                order = list(variants)
                random.Random(repeat).shuffle(order)
                for variant in order:
                    result = _run(context, workload, variant, args.device, root)
                    if repeat >= 0:
                        results[variant].append(result)
            hand_runs = [r["samples"] / r["seconds"] for r in results["hand"]]
            hand_loss = results["hand"][0]["loss"]
            for variant, runs in results.items():
                throughputs = [r["samples"] / r["seconds"] for r in runs]
                # each run against the hand loop of its own repeat: the machine's slow minutes cancel
                ratios = [mine / hand for mine, hand in zip(throughputs, hand_runs)]
                ratio = statistics.median(ratios)
                loss = runs[0]["loss"]
                target = TARGETS.get((workload, variant))
                if target is not None and ratio < target:
                    failures.append(f"{workload} {variant} (ratio {ratio:.3f} < {target:.2f})")
                if any(abs(r["loss"] - hand_loss) > 1e-6 for r in runs):
                    failures.append(f"{workload} {variant} (final loss differs from the hand loop's)")
                peak = max(r["peak_mib"] for r in runs)
                rows.append(
                    (
                        workload,
                        variant,
                        statistics.median(throughputs),
                        ratio,
                        min(ratios),
                        max(ratios),
                        target,
                        loss,
                        peak,
                    )
                )
    finally:
        server.shutdown()

    print(
        f"torchcb benchmark: {args.repeats} alternating runs each, device {args.device}, 1 thread; "
        "ratio = median over repeats of the run's throughput / the hand loop's in the same repeat"
    )
    print(
        "| workload | variant | samples/s (median) | ratio to hand loop | ratio range | target | final loss | peak memory (MiB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for workload, variant, throughput, ratio, low, high, target, loss, peak in rows:
        target_text = f"≥ {target:.2f}" if target else ""
        print(
            f"| {workload} | {variant} | {throughput:,.0f} | {ratio:.3f} | {low:.3f}–{high:.3f} | {target_text} "
            f"| {loss:.6f} | {peak:,.0f} |"
        )
    if failures:
        print("missed:", ", ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
