"""crumple's peak memory on the CPU for a GPT-2-small-sized language model (~124M weights).

A transformers `GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
n_positions=128)` with random weights in float32, 4 tokenized dict batches of 2 sequences
of 32 tokens (input_ids, attention_mask, labels with -100 on padding), and
`cr.surface(model, "model", batches, Plane.random(model, seed=0), 3 x 3 grid)` with the
strategies "loop" and "vmap" (chunk_size 3), the data held and streamed (`stream=True`).

Each configuration runs in a fresh process. Its baseline is the resident memory just
before the surface call (the model and the plane built); its peak is the high-water mark
of resident memory during the call (VmHWM, reset just before it through
/proc/self/clear_refs; `ru_maxrss` is printed beside it: it also counts what building the
plane touched). A separate process measures the parts of the formula: P (the number of
weights), whether the plane's origin shares storage with the model, the plane's resident
size, and the activations of one forward pass (the peak above the model during
`model(**batch)` under no_grad).

The formula compared with: extra peak memory of a run = the origin, the two directions and
one combined copy of the weights (4 P numbers, 3 P when the origin shares the model's
tensors) plus the activations of the points evaluated together (1 for the loop, chunk_size
for vmap). Against the pre-surface baseline (plane already built) that is 1 P plus the
activations. The findings below the table name the copies beyond it.

`--quick`: 2 layers instead of 12 (the embedding, 50257 x 768, still dominates P).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

MB = 2**20
CHUNK = 3  # points per tile, the most evaluated together
N_BATCHES, BATCH, SEQ = 4, 2, 32
CONFIGS = [("loop", False), ("loop", True), ("vmap", False), ("vmap", True)]


def rss() -> int:
    """Resident memory now, in bytes."""
    return _status("VmRSS")


def hwm() -> int:
    """The high-water mark of resident memory since the last ``reset_peak``, in bytes."""
    return _status("VmHWM")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak() -> None:
    """Return freed heap memory to the system (glibc's malloc_trim), then reset VmHWM to
    the current resident size (Linux >= 4.0)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_model(quick: bool):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2 if quick else 12,
        n_embd=768,
        n_head=12,
        vocab_size=50257,
        n_positions=128,
        attn_implementation="eager",
    )
    return GPT2LMHeadModel(config).float().eval()


def batches() -> list[dict[str, torch.Tensor]]:
    """Tokenized dict batches; the second sequence of each batch is padded after 24 tokens."""
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(N_BATCHES):
        ids = torch.randint(0, 50257, (BATCH, SEQ), generator=g)
        mask = torch.ones(BATCH, SEQ, dtype=torch.long)
        mask[1, 24:] = 0
        ids = ids.masked_fill(mask == 0, 50256)
        labels = ids.masked_fill(mask == 0, -100)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def child_parts(quick: bool) -> dict:
    """P, the origin's sharing, the plane's resident size, one forward pass's activations."""
    import crumple as cr

    model = build_model(quick)
    reset_peak()
    before_plane = rss()
    plane = cr.Plane.random(model, seed=0)
    reset_peak()
    plane_bytes = rss() - before_plane
    ptrs = {p.data_ptr() for p in model.parameters()}
    shared = sum(t.data_ptr() in ptrs for t in plane.origin.values())
    data = batches()
    with torch.no_grad():
        model(**data[0])  # warm-up: one-time allocations
        reset_peak()
        base = rss()
        model(**data[0])
        activations = hwm() - base
    return {
        "P": sum(p.numel() for p in model.parameters()),
        "origin_shared": shared,
        "origin_tensors": len(plane.origin),
        "directions": len(plane.directions),
        "plane_bytes": plane_bytes,
        "activations": activations,
    }


def child_run(quick: bool, strategy: str, stream: bool) -> dict:
    """Peak resident memory of one surface call above the resident size just before it."""
    import crumple as cr

    torch.set_num_threads(2)
    model = build_model(quick)
    reset_peak()
    model_only = rss()
    plane = cr.Plane.random(model, seed=0)
    data = batches()
    grid = cr.Grid(alpha=np.linspace(-1, 1, 3), beta=np.linspace(-1, 1, 3))
    reset_peak()
    baseline, maxrss_before = rss(), maxrss()
    start = time.perf_counter()
    ds = cr.surface(
        model, "model", data, plane, grid, strategy=strategy, chunk_size=CHUNK, stream=stream
    )
    return {
        "model_only": model_only,
        "baseline": baseline,
        "peak": hwm(),
        "maxrss_before": maxrss_before,
        "maxrss": maxrss(),
        "strategy": ds.attrs["strategy"],
        "points_per_call": int(ds.attrs["points_per_call"]),
        "loss": float(ds["loss"].mean()),
        "seconds": time.perf_counter() - start,
    }


def in_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        sys.exit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def predictions(parts: dict, strategy: str) -> dict[str, float]:
    """The formula's extra memory, above the model alone and above model + plane, and the
    copies the code makes (read from crumple's source; see ``findings``), in bytes."""
    p = parts["P"] * 4
    points = 1 if strategy == "loop" else CHUNK
    act = points * parts["activations"]
    plane = (parts["directions"] + (0 if parts["origin_shared"] else 1)) * p
    # loop: Loop.work (deepcopy), each point written into it in place;
    # vmap: the block's row (1 x P) and its CHUNK combined points
    copies = p if strategy == "loop" else (1 + CHUNK) * p
    return {
        "formula_total": plane + p + act,
        "formula_run": p + act,
        "code_run": copies + act,
    }


def table(parts: dict, runs: dict) -> None:
    p = parts["P"] * 4
    print(
        f"P = {parts['P']:,} weights = {p / MB:.0f} MiB in float32; plane: "
        f"{parts['directions']} directions, origin sharing the model's storage in "
        f"{parts['origin_shared']} of {parts['origin_tensors']} tensors; plane resident "
        f"{parts['plane_bytes'] / MB:.0f} MiB = {parts['plane_bytes'] / p:.2f} P; one forward "
        f"pass ({BATCH} x {SEQ} tokens): {parts['activations'] / MB:.0f} MiB activations"
    )
    head = (
        f"{'configuration':<14} {'ppc':>3} {'peak-base':>9} {'formula':>8} {'ratio':>6} "
        f"{'in P':>5} {'peak-model':>10} {'formula4P':>9} {'ratio':>6} {'code':>6} "
        f"{'ratio':>6} {'maxrss':>7} {'s':>5}"
    )
    print("MiB; base = RSS before surface (model + plane built); formula = P + activations;")
    print("peak-model / formula4P: above the model alone, the plane included; code = the copies")
    print("crumple makes (below) + activations; maxrss = ru_maxrss of the process; s = seconds")
    print(head)
    print("-" * len(head))
    for (strategy, stream), r in runs.items():
        f = predictions(parts, strategy)
        extra = r["peak"] - r["baseline"]
        total = r["peak"] - r["model_only"]
        name = f"{strategy} {'stream' if stream else 'held'}"
        print(
            f"{name:<14} {r['points_per_call']:>3} {extra / MB:>9.0f} "
            f"{f['formula_run'] / MB:>8.0f} {extra / f['formula_run']:>6.2f} {extra / p:>5.2f} "
            f"{total / MB:>10.0f} {f['formula_total'] / MB:>9.0f} "
            f"{total / f['formula_total']:>6.2f} {f['code_run'] / MB:>6.0f} "
            f"{extra / f['code_run']:>6.2f} {r['maxrss'] / MB:>7.0f} {r['seconds']:>5.1f}"
        )


FINDINGS = """\
Where the weights are held (crumple/ at this commit):
* the plane: Plane.random clones the model's weights for its origin (params.py,
  parameters_of), so the plane is 3 P: the origin and two directions.
* loop: one copy of the model (Loop.__init__), each grid point written into it in place
  (origin + a*d1, then + b*d2, strategies.py Loop._write): 1 P besides the plane, the
  formula's one combined copy.
* vmap: Plane.at under nested vmap makes the block's row (origin + a*d1, 1 P) and each of
  its points' combined weights (1 P each), with a temporary c*d per parameter while they
  are made: about (1 + points per call) P, which engine.py _sizes counts per point when
  it sizes the calls within max_memory.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers instead of 12")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, quick, *rest = args.child
        if kind == "parts":
            result = child_parts(quick == "1")
        else:
            result = child_run(quick == "1", rest[0], rest[1] == "1")
        print(json.dumps(result))
        return
    q = "1" if args.quick else "0"
    layers = 2 if args.quick else 12
    print(f"GPT-2 ({layers} layers, width 768, vocab 50257), float32, 3 x 3 grid, CPU")
    parts = in_child("parts", q)
    runs = {}
    for strategy, stream in CONFIGS:
        runs[(strategy, stream)] = in_child("run", q, strategy, "1" if stream else "0")
    table(parts, runs)
    losses = {r["loss"] for r in runs.values()}
    print(f"mean loss over the grid, all configurations: {sorted(losses)}")
    print(FINDINGS, end="")


if __name__ == "__main__":
    main()
