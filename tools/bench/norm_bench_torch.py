"""PyTorch peers of atom-bench-norm: the same kernels and shapes in eager mode and under
torch.compile, timed as atom-bench-norm times its graph column: `per_graph` calls captured into
one CUDA graph, the graph replayed with CUDA events around each replay, the median per call.
torch.compile runs with its defaults (static shapes at T=1, then one dynamic-T graph per function).

Usage: python3 tools/bench/norm_bench_torch.py [--ours ours.csv] [--compile-budget SECONDS]
                                               [--ready FILE --go FILE]
With --ours, prints the joint table (atom's graph time, GB/s and % of copy next to eager and
compiled). With --ready/--go, compiles and warms up every case first, creates the --ready file,
and waits for the --go file before timing (so compilation can overlap other work on the machine).
"""
import argparse
import csv
import os
import time

import torch

from torch_timing import capture_graph

EPS = 1e-6
dev = "cuda"
SWEEP = (1, 16, 64, 256, 1024, 4096, 16384)


def graph_us(fn, per_graph=20, replays=15):
    g = capture_graph(fn, calls=per_graph)
    g.replay()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(replays):
        start.record()
        g.replay()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) * 1000.0 / per_graph)
    samples.sort()
    return samples[len(samples) // 2]


def rms(x, w):
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS) * w.float()


def fp8_quant(y, group):
    shape = y.shape
    g = y.reshape(shape[0], -1, group)
    amax = g.abs().amax(-1, keepdim=True)
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / 448.0)
    q = (g / scale).to(torch.float8_e4m3fn)
    return q.reshape(shape), scale.squeeze(-1)


# RNE ties of the e2m1 grid (made once: no host-to-device copies inside a graph capture).
E2M1_BOUNDS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], device=dev)


def mxfp4_quant(y):
    t, c = y.shape
    g = y.reshape(t, -1, 32)
    amax = g.abs().amax(-1, keepdim=True)
    e = torch.floor(torch.log2(amax)) - 2
    v = g / torch.exp2(e)
    code = torch.bucketize(v.abs(), E2M1_BOUNDS).to(torch.uint8) | ((v < 0).to(torch.uint8) << 3)
    code = code.reshape(t, c)
    return code[:, 0::2] | (code[:, 1::2] << 4), (e + 127).to(torch.uint8)


def rms_bf16(x, w):
    return rms(x, w).bfloat16()


def add_rms_bf16(x, r, w):
    s = (x.float() + r.float()).bfloat16()
    return s, rms(s, w).bfloat16()


def rms_fp8_token(x, w):
    return fp8_quant(rms(x, w), x.shape[1])


def rms_fp8_group(x, w):
    return fp8_quant(rms(x, w), 128)


def add_rms_mxfp4(x, r, w):
    s = (x.float() + r.float()).bfloat16()
    return s, mxfp4_quant(rms(s, w))


def quant_token(x):
    return fp8_quant(x.float(), x.shape[1])


def quant_group(x):
    return fp8_quant(x.float(), 128)


def quant_mx(x):
    return mxfp4_quant(x.float())


def ds_qk_bf16(x, qw, kw):
    q, kv, pe = x.split([1536, 512, 64], dim=-1)
    return rms(q, qw).bfloat16(), rms(kv, kw).bfloat16(), pe.clone()


def ds_qk_mx(x, qw, kw):
    q, kv, pe = x.split([1536, 512, 64], dim=-1)
    return mxfp4_quant(rms(q, qw)), rms(kv, kw).bfloat16(), pe.clone()


def rope_neox(x, cos, sin):
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def qwen_fused(qkv, qw, kw, pos, cos_sin, slots, k_cache, v_cache, k_scale, v_scale):
    t = qkv.shape[0]
    q, k, v = qkv.view(t, 40, 128).split([32, 4, 4], dim=1)
    cs = cos_sin[pos]
    cos, sin = cs[:, None, :64], cs[:, None, 64:]
    q = rope_neox(rms(q, qw), cos, sin).bfloat16()
    k = rope_neox(rms(k, kw), cos, sin)
    kq, ks = fp8_quant(k.reshape(t * 4, 128), 128)
    vq, vs = fp8_quant(v.float().reshape(t * 4, 128), 128)
    k_cache.view(-1, 4, 128)[slots] = kq.view(t, 4, 128)
    v_cache.view(-1, 4, 128)[slots] = vq.view(t, 4, 128)
    k_scale.view(-1, 4)[slots] = ks.view(t, 4)
    v_scale.view(-1, 4)[slots] = vs.view(t, 4)
    return q


def cases():
    """(name, shape label as atom-bench-norm prints it, function, argument builder), grouped by
    function so each function compiles once per specialisation."""
    g = torch.Generator(device=dev).manual_seed(0)

    def r(*shape):
        return (torch.rand(*shape, device=dev, generator=g) * 4 - 2).bfloat16()

    def qwen_args(t):
        blocks = t // 16 + 1
        return (r(t, 5120), r(128), r(128), torch.arange(t, device=dev) * 7919 % 32768,
                torch.rand(32768, 128, device=dev, generator=g), torch.arange(t, device=dev),
                torch.empty(blocks, 16, 4, 128, device=dev, dtype=torch.float8_e4m3fn),
                torch.empty(blocks, 16, 4, 128, device=dev, dtype=torch.float8_e4m3fn),
                torch.empty(blocks, 16, 4, device=dev), torch.empty(blocks, 16, 4, device=dev))

    sweep = [
        ("rms_norm bf16", rms_bf16, lambda t: (r(t, 7168), r(7168))),
        ("add_rms_norm bf16", add_rms_bf16, lambda t: (r(t, 7168), r(t, 7168), r(7168))),
        ("rms_norm fp8/token", rms_fp8_token, lambda t: (r(t, 7168), r(7168))),
        ("rms_norm fp8/1x128", rms_fp8_group, lambda t: (r(t, 7168), r(7168))),
        ("add_rms_norm mxfp4", add_rms_mxfp4, lambda t: (r(t, 7168), r(t, 7168), r(7168))),
    ]
    out = []
    for name, fn, build in sweep:
        out.append((name, fn, [(f"[{t},7168]", (lambda t=t, b=build: b(t))) for t in SWEEP]))
    out.append(("qwen qk fused", qwen_fused, [(f"T={t}", (lambda t=t: qwen_args(t))) for t in SWEEP]))
    for name, fn, build in [("quantize fp8/token", quant_token, lambda t: (r(t, 7168),)),
                            ("quantize fp8/1x128", quant_group, lambda t: (r(t, 7168),)),
                            ("quantize mxfp4", quant_mx, lambda t: (r(t, 7168),))]:
        out.append((name, fn, [(f"[{t},7168]", (lambda t=t, b=build: b(t))) for t in (1, 4096)]))
    for name, fn in [("ds qk_norm bf16", ds_qk_bf16), ("ds qk_norm mxfp4", ds_qk_mx)]:
        out.append((name, fn, [(f"[{t},2112]", (lambda t=t: (r(t, 2112), r(1536), r(512))))
                               for t in (1, 4096)]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours")
    ap.add_argument("--compile-budget", type=float, default=240.0)
    ap.add_argument("--ready")
    ap.add_argument("--go")
    opts = ap.parse_args()
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    began = time.time()
    prepared = []
    for name, fn, shapes in cases():
        compiled = torch.compile(fn)
        for shape, build in shapes:
            args = build()
            comp = None
            if time.time() - began < opts.compile_budget:
                comp = compiled
                comp(*args)  # compiles this specialisation now
            prepared.append((name, shape, fn, comp, args))
    torch.cuda.synchronize()
    print(f"compiled and warmed up in {time.time() - began:.0f} s", flush=True)
    if opts.ready:
        open(opts.ready, "w").close()
        while not os.path.exists(opts.go):
            time.sleep(0.5)

    ours = {}
    copy_gbps = None
    if opts.ours:
        with open(opts.ours) as f:
            for rec in csv.reader(f):
                if rec[0].startswith("policy"):
                    continue
                # name, shape (may hold a comma), stream us, graph us, GB/s, % copy
                shape = ",".join(rec[1:-4])
                ours[(rec[0], shape)] = (float(rec[-3]), float(rec[-2]), float(rec[-1]))
                if rec[0] == "copy (reference)":
                    copy_gbps = float(rec[-2])
    x = torch.empty(32768 * 16384, dtype=torch.bfloat16, device=dev)
    y = torch.empty_like(x)
    us = graph_us(lambda: y.copy_(x), per_graph=5, replays=9)
    print(f"torch copy_ 1 GiB: {us:.1f} us, {2 * x.numel() * 2 / us * 1e-3:.0f} GB/s"
          f" (atom copy: {copy_gbps} GB/s)")
    del x, y
    print("| kernel | shape | atom us | atom GB/s | % copy | torch eager us | torch.compile us |"
          " compile / atom |")
    print("|---|---|---|---|---|---|---|---|")
    for name, shape, fn, comp, args in prepared:
        eager = graph_us(lambda: fn(*args))
        try:
            c_us = graph_us(lambda: comp(*args)) if comp else None
        except Exception as e:  # a capture failure is reported, not fatal
            print(f"  {name} {shape}: torch.compile capture failed: {type(e).__name__}")
            c_us = None
        a = ours.get((name, shape))
        a_txt = f"{a[0]:.2f} | {a[1]:.0f} | {a[2]:.1f}" if a else "- | - | -"
        c_txt = f"{c_us:.2f}" if c_us else "-"
        ratio = f"{c_us / a[0]:.2f}x" if (a and c_us) else "-"
        print(f"| {name} | {shape} | {a_txt} | {eager:.2f} | {c_txt} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
