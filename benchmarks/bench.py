"""torchcb against hand-written PyTorch loops: throughput ratio, final loss, peak memory.

    python benchmarks/bench.py                 # W1 and W2, 21 alternating repeats
    python benchmarks/bench.py --repeats 31 --workloads W1
    python benchmarks/bench.py --device cuda   # W1, W2 and W3 on a GPU, 5 repeats

Every run is its own process, forked from one that has imported torch and torchcb, so
imports are not timed (what torchcb imports or builds lazily, at first use, is). Each
repeat runs every variant once, in a shuffled order (seeded), and prints a line per run as
it goes (on stderr); the table comes at the end (on stdout). Throughput is training samples
per second. Each torchcb variant is paired with the hand loop that does the same work; a
run's ratio is its throughput over that hand loop's in the same repeat, so a slow minute of
the machine hits both sides, and the table gives the median ratio, a 95% confidence interval
for it (order statistics of the repeats' ratios: distribution-free) and the range over the
repeats; a target inside the interval is within the noise of the run. The final loss of
every torchcb run must equal its hand loop's (same seed) to 1e-6.

Output: the table on stdout, and with ``--json PATH`` the same rows with named fields
(``variant``, ``against``, ``ratio``, ``ci_low``, ``ci_high``, ``target``, ``met_target``,
``final_loss``, ``hand_final_loss``, ``reached_hand_loss`` ...). Exit status: 0 when every
run ran and every torchcb run reached its hand loop's final loss, whether or not a speed
target was met (a missed target is listed after ``missed:`` and in ``met_target``); 3 when
a final loss differs; 4 for a missed target under ``--require-targets``; 1 when a run failed.

Workloads:
    W1  MLP 32-64-10, 16384 samples, batch 32, 3 epochs              (overhead-bound)
    W2  MLP 256-1024-1024-10, 8192 samples, batch 256, 2 epochs      (compute-bound on a CPU)
    W3  MLP 1024-4096-4096-10, 65536 samples, batch 1024, 3 epochs   (compute-bound on a GPU;
        --device cuda only: on one CPU thread a run takes minutes)
Hand loops (in-memory tensors, Adam, the loss read once per epoch):
    hand         a device permutation each epoch, each batch gathered with it (x[index])
    hand_views   no shuffling: each batch a contiguous view x[i:i+batch], nothing gathered
    hand_writes  hand, plus what the `all` variant writes every epoch, done in the training
                 thread: a full checkpoint (module and optimizer; atomic and fsynced), a CSV
                 row, TensorBoard scalars (flushed), a JSON line, and an HTTP POST of the logs
torchcb variants (the hand loop each is compared with):
    bare            Trainer.fit, verbose=0                                        (hand)
    verbose1        Trainer.fit, verbose=1, stdout a pipe (the default callbacks)  (hand)
    all             verbose=0 with nine callbacks: EarlyStopping, ModelCheckpoint (each
                    epoch, full), CSVLogger, ReduceLROnPlateau, LearningRateScheduler,
                    TensorBoard (per epoch, no graph), TerminateOnNaN, a JSON-lines
                    LambdaCallback, RemoteMonitor to a local server     (hand; hand_writes on W2, W3)
    bare_noshuffle  bare with shuffle=False                                  (hand_views)
    bare_ema        bare with Trainer(use_ema=True): a moving average of the weights updated
                    after every optimizer step (one fused update; W1 only)            (hand)
    all_noshuffle   all with shuffle=False                                   (hand_views)
"""

from __future__ import annotations

import argparse
import json
import math
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
    "W3": {"sizes": [1024, 4096, 4096, 10], "samples": 65536, "batch": 1024, "epochs": 3},
}
VARIANTS = {
    "W1": ["hand", "hand_views", "bare", "verbose1", "all", "bare_noshuffle", "all_noshuffle", "bare_ema"],
    "W2": ["hand", "hand_writes", "bare", "all"],
    "W3": ["hand", "hand_writes", "bare", "all"],
}
HAND_LOOPS = ("hand", "hand_views", "hand_writes")
# Which hand loop each torchcb variant is measured against (hand by default).
BASELINES = {
    "bare_noshuffle": "hand_views",
    "all_noshuffle": "hand_views",
    ("W2", "all"): "hand_writes",
    ("W3", "all"): "hand_writes",
}
TARGETS = {
    ("W1", "bare"): 0.97,
    ("W1", "all"): 0.90,
    ("W1", "bare_noshuffle"): 0.98,
    ("W1", "all_noshuffle"): 0.93,
    ("W2", "bare"): 0.99,
    ("W2", "all"): 1.00,
    ("W3", "bare"): 0.99,
    ("W3", "all"): 1.00,
}


def baseline(workload: str, variant: str) -> str:
    return BASELINES.get((workload, variant), BASELINES.get(variant, "hand"))


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A confidence interval for the median of ``values``, from their order statistics.

    The k-th smallest and k-th largest of n values bound the median with probability
    1 - 2 P(Binomial(n, 1/2) < k), whatever their distribution; k is the largest that keeps
    that at least ``confidence``. Too few values for that give the whole range.

    >>> median_interval([float(v) for v in range(1, 22)])
    (6.0, 16.0)
    """
    ordered, n = sorted(values), len(values)
    k = 1
    while k < n // 2 and 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n <= 1 - confidence:
        k += 1
    return ordered[k - 1], ordered[n - k]


# ----------------------------------------------------------------------------- one run


def _model(sizes, device):
    import torch

    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).to(device)


class _SynchronousWrites:
    """What the `all` variant writes every epoch, written by a hand loop in its own thread."""

    def __init__(self, directory, server_root):
        from torch.utils.tensorboard import SummaryWriter

        self.directory, self.url = directory, server_root + "/publish/epoch/end/"
        self.tensorboard = SummaryWriter(os.path.join(directory, "tb", "train"))
        self.csv = open(os.path.join(directory, "log.csv"), "w")  # noqa: SIM115
        self.json_lines = open(os.path.join(directory, "loss_log.json"), "w", buffering=1)  # noqa: SIM115

    def epoch_end(self, net, optimizer, epoch, loss):
        import json
        import urllib.request

        from torchcb.checkpoint import atomic_save

        state = {"module": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}
        atomic_save(state, os.path.join(self.directory, f"weights.{epoch + 1:02d}.pt"))
        self.csv.write(f"{epoch},{loss}\n")
        self.csv.flush()
        self.tensorboard.add_scalar("epoch_loss", loss, epoch)
        self.tensorboard.flush()
        self.json_lines.write(json.dumps({"epoch": epoch, "loss": loss}) + "\n")
        body = json.dumps({"epoch": epoch, "loss": loss}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def close(self):
        self.tensorboard.close()
        self.csv.close()
        self.json_lines.close()


def _hand_loop(net, optimizer, x, y, batch, epochs, shuffle=True, writes=None):
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    for epoch in range(epochs):
        net.train()
        losses = []
        if shuffle:
            order = torch.randperm(n, device=x.device)
            for start in range(0, n, batch):
                index = order[start : start + batch]
                xb, yb = x[index], y[index]
                loss = F.cross_entropy(net(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
        else:
            for start in range(0, n, batch):
                loss = F.cross_entropy(net(x[start : start + batch]), y[start : start + batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
        # one read per epoch, as a careful hand loop does (the workloads' batches are all full)
        epoch_loss = torch.stack(losses).double().mean().item()
        if writes is not None:
            writes.epoch_end(net, optimizer, epoch, epoch_loss)
    if writes is not None:
        writes.close()
    return epoch_loss


def _nine_callbacks(directory, server_root):
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
    if variant in ("all", "all_noshuffle", "hand_writes"):
        # a one-off import (TensorBoard's writer) is not training time
        import torch.utils.tensorboard  # noqa: F401
    if variant not in HAND_LOOPS:
        from torchcb import Trainer

        trainer = Trainer(
            net, optimizer, loss="sparse_categorical_crossentropy", device=device, use_ema=variant == "bare_ema"
        )
        callbacks = []
        if variant.startswith("all"):
            callbacks = _nine_callbacks(directory, server_root)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if variant in HAND_LOOPS:
        final_loss = _hand_loop(
            net,
            optimizer,
            x,
            y,
            spec["batch"],
            spec["epochs"],
            shuffle=variant != "hand_views",
            writes=_SynchronousWrites(directory, server_root) if variant == "hand_writes" else None,
        )
    else:
        history = trainer.fit(
            x,
            y,
            batch_size=spec["batch"],
            epochs=spec["epochs"],
            verbose=1 if variant == "verbose1" else 0,
            callbacks=callbacks,
            shuffle=not variant.endswith("noshuffle"),
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


def summarize(workload: str, results: dict[str, list[dict]], repeats: int) -> list[dict]:
    """One row per variant, with named fields: what the table and the JSON output show.

    ``results`` maps each variant to its runs (one a repeat, in repeat order); a torchcb
    variant's runs are paired with its hand loop's of the same repeat.
    """
    rows = []
    for variant, runs in results.items():
        throughputs = [r["samples"] / r["seconds"] for r in runs]
        against = variant if variant in HAND_LOOPS else baseline(workload, variant)
        hand_runs = [r["samples"] / r["seconds"] for r in results[against]]
        # each run against its hand loop in the same repeat: the machine's slow minutes cancel
        ratios = [mine / hand for mine, hand in zip(throughputs, hand_runs)]
        ratio, (ci_low, ci_high) = statistics.median(ratios), median_interval(ratios)
        target = TARGETS.get((workload, variant))
        hand_loss = results[against][0]["loss"]
        rows.append(
            {
                "workload": workload,
                "variant": variant,
                "against": None if variant in HAND_LOOPS else against,
                "repeats": repeats,
                "samples_per_s": statistics.median(throughputs),
                "ratio": ratio,
                "ci_low": ci_low,
                "ci_high": ci_high,
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "target": target,
                "met_target": None if target is None else ratio >= target,
                "final_loss": runs[0]["loss"],
                "hand_final_loss": hand_loss,
                "reached_hand_loss": all(abs(r["loss"] - hand_loss) <= 1e-6 for r in runs),
                "peak_mib": max(r["peak_mib"] for r in runs),
            }
        )
    return rows


def missed_targets(rows: list[dict]) -> list[str]:
    """Each row under its target, with the interval that says whether that is within the noise."""
    return [
        f"{r['workload']} {r['variant']} (ratio {r['ratio']:.3f} < {r['target']:.2f}; "
        f"95% CI {r['ci_low']:.3f}–{r['ci_high']:.3f})"
        for r in rows
        if r["met_target"] is False
    ]


def loss_mismatches(rows: list[dict]) -> list[str]:
    """Each torchcb variant whose final loss is not its hand loop's: it did not do the same work."""
    return [
        f"{r['workload']} {r['variant']} (final loss {r['final_loss']:.6f}, the {r['against']} loop's "
        f"{r['hand_final_loss']:.6f})"
        for r in rows
        if not r["reached_hand_loss"]
    ]


# The exit status: 1 is a run that failed (an exception) and 2 a bad command line, as for any Python script.
RAN, LOSS_DIFFERS, TARGET_MISSED = 0, 3, 4


def exit_status(rows: list[dict], require_targets: bool = False) -> int:
    """0 when every run ran and reached its hand loop's final loss; 3 when a final loss differs;
    4 when ``require_targets`` and a ratio is under its target (otherwise a missed target is
    reported, in ``missed:`` and each row's ``met_target``, and the status stays 0)."""
    if loss_mismatches(rows):
        return LOSS_DIFFERS
    if require_targets and missed_targets(rows):
        return TARGET_MISSED
    return RAN


def print_table(rows: list[dict], repeats: int, device: str) -> None:
    print(
        f"torchcb benchmark: {repeats} alternating runs each, device {device}, 1 thread; ratio = median over "
        "repeats of the run's throughput / its hand loop's in the same repeat"
    )
    print(
        "| workload | variant | against | samples/s (median) | ratio | 95% CI | ratio range | target | final loss "
        "| peak memory (MiB) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        target_text = f"≥ {r['target']:.2f}" if r["target"] else ""
        print(
            f"| {r['workload']} | {r['variant']} | {r['against'] or ''} | {r['samples_per_s']:,.0f} | {r['ratio']:.3f} "
            f"| {r['ci_low']:.3f}–{r['ci_high']:.3f} | {r['ratio_min']:.3f}–{r['ratio_max']:.3f} | {target_text} "
            f"| {r['final_loss']:.6f} | {r['peak_mib']:,.0f} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), help="default: W1 W2 (and W3 on cuda)")
    parser.add_argument("--repeats", type=int, help="default: 21 on the CPU, 5 on cuda")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", help="run only these torchcb variants (with their hand loops)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows, with named fields, to this JSON file")
    parser.add_argument(
        "--require-targets", action="store_true", help="exit with status 4 when a ratio is under its target"
    )
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    workloads = args.workloads or (["W1", "W2", "W3"] if on_gpu else ["W1", "W2"])
    repeats = args.repeats if args.repeats is not None else (5 if on_gpu else 21)

    # Every run is a fresh process forked from a server that has imported torch and torchcb:
    # the runs start in a second, not in the time torch takes to import.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torchcb", "torchcb.callbacks"])
    server, root = _serve_locally()
    rows: list[dict] = []
    try:
        for workload in workloads:
            chosen = [
                v for v in VARIANTS[workload] if v not in HAND_LOOPS and (not args.variants or v in args.variants)
            ]
            variants = [v for v in VARIANTS[workload] if v in {baseline(workload, c) for c in chosen}] + chosen
            results: dict[str, list[dict]] = {v: [] for v in variants}
            for repeat in range(-1, repeats):  # repeat -1 warms the machine up and is not counted
                # a shuffled order each repeat (seeded, so reproducible): a run can be slowed or
                # sped up by the one before it, and no variant always follows the same one
                order = list(variants)
                random.Random(repeat).shuffle(order)
                for variant in order:
                    result = _run(context, workload, variant, args.device, root)
                    label = "warm-up" if repeat < 0 else f"repeat {repeat + 1}/{repeats}"
                    print(
                        f"{workload} {label} {variant}: {result['samples'] / result['seconds']:,.0f} samples/s, "
                        f"final loss {result['loss']:.6f}",
                        file=sys.stderr,
                        flush=True,
                    )
                    if repeat >= 0:
                        results[variant].append(result)
            rows += summarize(workload, results, repeats)
    finally:
        server.shutdown()

    print_table(rows, repeats, args.device)
    missed, mismatches = missed_targets(rows), loss_mismatches(rows)
    if missed:
        print("missed:", ", ".join(missed))
    if mismatches:
        print("final loss differs:", ", ".join(mismatches))
    if args.json:
        document = {
            "device": args.device,
            "repeats": repeats,
            "threads": 1,
            "rows": rows,
            "missed_targets": missed,
            "loss_mismatches": mismatches,
        }
        with open(args.json, "w") as file:
            json.dump(document, file, indent=1)
    return exit_status(rows, args.require_targets)


if __name__ == "__main__":
    sys.exit(main())
