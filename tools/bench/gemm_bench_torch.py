"""PyTorch peers for atom-bench-gemm, timed in the same run on the same rows, and the joint table.

Usage: gemm_bench_torch.py ATOM_CSV [OUT_TABLE]
Reads the CSV atom-bench-gemm wrote (kind,format,model,weight,M,N,K,us,weight_bytes) and times,
in graph replay as atom's rows are (20 calls captured as one CUDA graph, replayed 10 times, the
median per call), the peers of each row: dense rows bf16 `x @ w.t()` and FP8 `torch._scaled_mm`
with one scale per row of x and of w; expert rows `torch._grouped_mm` (bf16) and
`torch._scaled_grouped_mm` (FP8, row scales) over the rows sorted by expert, each call another
routing of T tokens to top_k of the experts (the sort itself not timed: the peer reads only the
chosen experts' weights, as atom does); BMM rows bf16 `torch.bmm`. Dense weights rotate over copies
that exceed the L2 cache. Also measured in the run: the copy rate and the bf16 and FP8 matrix rates
(8192^3). The table gives per row atom's time and its weight bytes' rate (and fraction of copy) per
format, the peers' times, and for M >= 128 the fraction of the roofline min(copy rate, matrix rate)
atom's best format reaches (the matrix rate of FP8 for the fp8 format, of bf16 for the others).
A peer op this torch build lacks reads "n/a".
"""
import csv
import math
import sys
from collections import defaultdict

import torch

from torch_timing import capture_graph, copies_for, replay_ms

CALLS = 20
REPLAYS = 10
TOP_K = 8


def graph_us(call):
    """Median microseconds per call of call(i), i the call's index, in graph replay."""
    state = {"i": 0}

    def next_call():
        call(state["i"])
        state["i"] += 1

    graph = capture_graph(next_call, calls=CALLS, warmup=CALLS)
    return replay_ms(graph, REPLAYS) * 1000.0 / CALLS


def rows_scales(x):
    amax = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-12)
    return (x.float() / amax * 448.0).to(torch.float8_e4m3fn), (amax / 448.0).float()


def copy_rate():
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    x.random_(0, 255)
    y = torch.empty_like(x)
    return 2 * x.numel() / (graph_us(lambda i: y.copy_(x)) * 1e-6) / 1e9


def matrix_rates():
    n = 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    bf16 = 2 * n**3 / (graph_us(lambda i: a @ b) * 1e-6) / 1e12
    a8, sa = rows_scales(a)
    b8, sb = rows_scales(b)
    try:
        fp8 = 2 * n**3 / (graph_us(lambda i: torch._scaled_mm(
            a8, b8.t(), scale_a=sa, scale_b=sb.t().contiguous(), out_dtype=torch.bfloat16))
            * 1e-6) / 1e12
    except RuntimeError:
        fp8 = float("nan")
    return bf16, fp8


def attempt(f):
    try:
        return f()
    except (RuntimeError, AttributeError, TypeError):
        return float("nan")


def dense_peers(m, n, k):
    ws = [torch.randn(n, k, device="cuda").to(torch.bfloat16) / math.sqrt(k)
          for _ in range(copies_for(n * k * 2))]
    x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
    nc = len(ws)
    t_bf16 = graph_us(lambda i: x @ ws[i % nc].t())
    w8 = [(q, s.t().contiguous()) for q, s in (rows_scales(w) for w in ws)]
    del ws
    x8, sx = rows_scales(x)
    t_fp8 = attempt(lambda: graph_us(lambda i: torch._scaled_mm(
        x8, w8[i % nc][0].t(), scale_a=sx, scale_b=w8[i % nc][1], out_dtype=torch.bfloat16)))
    return t_bf16, t_fp8


def expert_peers(weight, experts, t, n, k):
    w = torch.randn(experts, n, k, device="cuda").to(torch.bfloat16) / math.sqrt(k)
    routes = []
    for _ in range(CALLS):
        ids = torch.stack([torch.randperm(experts, device="cuda")[:TOP_K] for _ in range(t)])
        flat = ids.flatten()
        counts = torch.bincount(flat, minlength=experts)
        routes.append(torch.cumsum(counts, 0).to(torch.int32))
    rows = t * TOP_K  # both GEMMs run the routed rows, sorted by expert
    a = torch.randn(rows, k, device="cuda").to(torch.bfloat16)
    w_t = w.transpose(1, 2)
    t_bf16 = attempt(lambda: graph_us(lambda i: torch._grouped_mm(a, w_t, offs=routes[i % CALLS])))
    amax = w.float().abs().amax(2).clamp(min=1e-12) if experts * n * k < (1 << 31) else None
    if amax is None:  # one expert at a time: a float copy of all of them would not fit
        amax = torch.stack([w[e].float().abs().amax(1).clamp(min=1e-12) for e in range(experts)])
    w8 = torch.empty(experts, n, k, device="cuda", dtype=torch.float8_e4m3fn)
    for e in range(experts):
        w8[e] = (w[e].float() / amax[e].unsqueeze(1) * 448.0).to(torch.float8_e4m3fn)
    del w, w_t
    sw = (amax / 448.0).float()
    a8, sa = rows_scales(a)
    t_fp8 = attempt(lambda: graph_us(lambda i: torch._scaled_grouped_mm(
        a8, w8.transpose(1, 2), sa.reshape(-1), sw, offs=routes[i % CALLS],
        out_dtype=torch.bfloat16)))
    return t_bf16, t_fp8


def bmm_peer(t, hn, k):
    h = 128
    n = hn // h
    ws = [torch.randn(h, k, n, device="cuda").to(torch.bfloat16)
          for _ in range(copies_for(h * n * k * 2))]
    a = torch.randn(h, t, k, device="cuda").to(torch.bfloat16)
    return graph_us(lambda i: torch.bmm(a, ws[i % len(ws)])), float("nan")


EXPERTS = {"deepseek-v3": 256, "qwen3-30b-a3b": 128}
FORMATS = ("mxfp4-asm", "mxfp4-triton", "bf16", "fp8")


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    rows = list(csv.DictReader(line for line in open(args[0]) if not line.startswith("#")))
    out = open(args[1], "w") if len(args) > 1 else None
    bw = copy_rate()
    bf16_rate, fp8_rate = matrix_rates()
    ours = defaultdict(dict)
    for r in rows:
        key = (r["kind"], r["model"], r["weight"], int(r["M"]), int(r["N"]), int(r["K"]))
        ours[key][r["format"]] = (float(r["us"]), float(r["weight_bytes"]))
    lines = [f"# {torch.cuda.get_device_name()} torch {torch.__version__}",
             f"# copy {bw:.0f} GB/s; matrix rate bf16 {bf16_rate:.0f}, FP8 {fp8_rate:.0f} TFLOP/s "
             "(8192^3, graph replay)",
             f"{'kind':<8} {'model':<14} {'weight':<16} {'M':>4} {'N':>6} {'K':>6} | "
             + " ".join(f"{f:>12}" for f in FORMATS) + " | "
             + " ".join(f"{f + ' %cp':>12}" for f in FORMATS)
             + f" | {'torch bf16':>10} {'torch fp8':>10} | {'roofline':>8}"]
    print("\n".join(lines), flush=True)
    for key in sorted(ours, key=lambda k: (k[0] != "gemm", k[0], k[1], k[2], k[3])):
        kind, model, weight, m, n, k = key
        got = ours[key]
        if kind == "gemm":
            peers = dense_peers(m, n, k)
        elif kind == "experts":
            peers = expert_peers(weight, EXPERTS[model], m, n, k)
        else:
            peers = bmm_peer(m, n, k)
        times = [got.get(f, (float("nan"), 0))[0] for f in FORMATS]
        rates = []
        for f in FORMATS:
            us, nbytes = got.get(f, (float("nan"), 0))
            rates.append(100 * nbytes / (us * 1e-6) / 1e9 / bw if nbytes else float("nan"))
        roof = ""
        if m >= 128 and kind != "bmm":
            routed = TOP_K if kind == "experts" else 1
            flops = 2 * m * routed * n * k
            best = []
            for f in FORMATS:
                if f in got:
                    us, nbytes = got[f]
                    rate = fp8_rate if f == "fp8" else bf16_rate
                    floor_us = max(nbytes / bw * 1e-3, flops / rate * 1e-6)
                    best.append(floor_us / us)
            roof = f"{100 * max(best):7.0f}%" if best else ""
        line = (f"{kind:<8} {model:<14} {weight:<16} {m:>4} {n:>6} {k:>6} | "
                + " ".join(f"{t:12.2f}" for t in times) + " | "
                + " ".join(f"{r:11.0f}%" for r in rates)
                + " | " + " ".join(f"{t:10.2f}" if not math.isnan(t) else f"{'n/a':>10}"
                                   for t in peers) + f" | {roof:>8}")
        lines.append(line)
        print(line, flush=True)
        torch.cuda.empty_cache()
    variants = sorted((k, f) for k in ours for f in ours[k] if ":" in f)
    if variants:
        lines.append("decode kernels (us; weight bytes' rate as % of copy):")
        for key, f in variants:
            us, nbytes = ours[key][f]
            lines.append(f"{f:>22} {key[1]:<14} {key[2]:<16} M={key[3]:<3} {us:9.2f} us "
                         f"{100 * nbytes / (us * 1e-6) / 1e9 / bw:5.0f}%")
    if out:
        out.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
