"""PyTorch peers for atom-bench-gemm, timed in the same run on the same shapes.

Usage: gemm_bench_torch.py ATOM_CSV [OUT_TABLE] [--no-compile]
Reads the CSV that atom-bench-gemm wrote, times bf16 matmul (eager and torch.compile),
torch._scaled_mm FP8 and bf16 torch.bmm on the same shapes, measures the device-to-device copy
bandwidth and the bf16 matrix rate, and prints one table. Weights rotate over copies that exceed
the L2 cache, as in the C++ benchmark; times are medians of batches of 20 calls. Decode shapes
(M <= 16) come first, so that torch.compile's time budget covers them. torch._scaled_mm needs M
to be a multiple of 16: smaller M runs padded to 16 rows (marked "*"). Rows of the C++ CSV with a
backend "asm:<kernel>" (decode kernel variants) are listed after the table. --no-compile skips
torch.compile (its column reads nan).
"""
import csv
import sys
import time

import torch

from torch_timing import copies_for, time_us

COMPILE_BUDGET_S = 90.0


def copy_bandwidth():
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    x.random_(0, 255)
    y = torch.empty_like(x)
    us = time_us(lambda i: y.copy_(x))
    return 2 * x.numel() / (us * 1e-6) / 1e9  # GB/s, read + write


def bf16_rate():
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    us = time_us(lambda i: a @ b)
    return 2 * 8192**3 / (us * 1e-6) / 1e12


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    budget_s = 0.0 if "--no-compile" in sys.argv else COMPILE_BUDGET_S
    rows = list(csv.DictReader(line for line in open(args[0]) if not line.startswith("#")))
    out = open(args[1], "w") if len(args) > 1 else None
    torch._dynamo.config.cache_size_limit = 256
    bw = copy_bandwidth()
    rate = bf16_rate()
    ours = {}
    for r in rows:
        ours[(r["kind"], r["backend"], int(r["M"]), int(r["N"]), int(r["K"]))] = (
            float(r["us"]), int(r["weight_bytes"]))
    lines = [f"# {torch.cuda.get_device_name()} torch {torch.__version__}",
             f"# copy bandwidth {bw:.0f} GB/s, bf16 matmul 8192^3 {rate:.0f} TFLOP/s"]
    lines.append(f"{'M':>5} {'N':>6} {'K':>6} | {'asm':>8} {'triton':>8} | {'bf16':>8} "
                 f"{'compile':>8} {'fp8':>8} | {'asm GB/s':>8} {'%copy':>6} {'tri %copy':>9} "
                 f"| {'asm TF/s':>8} {'%bf16':>6}")
    compiled = torch.compile(lambda x, w: x @ w.t(), dynamic=False)
    t_begin = time.time()
    shapes = sorted({(k[2], k[3], k[4]) for k in ours if k[0] == "gemm"},
                    key=lambda s: (s[0] > 16, s[1], s[2], s[0]))
    for m, n, k in shapes:
        w_bf16 = [torch.randn(n, k, device="cuda").to(torch.bfloat16)
                  for _ in range(copies_for(n * k * 2))]
        x = torch.randn(m, k, device="cuda").to(torch.bfloat16)
        nc = len(w_bf16)
        t_bf16 = time_us(lambda i: x @ w_bf16[i % nc].t())
        t_comp = float("nan")
        if time.time() - t_begin < budget_s:
            t_comp = time_us(lambda i: compiled(x, w_bf16[i % nc]))
        w8 = [w.to(torch.float8_e4m3fn) for w in w_bf16]
        del w_bf16
        m8 = (m + 15) // 16 * 16
        x8 = torch.randn(m8, k, device="cuda").to(torch.float8_e4m3fn)
        one = torch.ones((), device="cuda")
        try:
            t_fp8 = time_us(lambda i: torch._scaled_mm(x8, w8[i % nc].t(), scale_a=one,
                                                       scale_b=one, out_dtype=torch.bfloat16))
        except RuntimeError:
            t_fp8 = float("nan")
        del w8
        t_asm, wbytes = ours[("gemm", "asm", m, n, k)]
        t_tri, wbytes_tri = ours[("gemm", "triton", m, n, k)]
        gbs = wbytes / (t_asm * 1e-6) / 1e9
        gbs_tri = wbytes_tri / (t_tri * 1e-6) / 1e9
        tfs = 2 * m * n * k / (t_asm * 1e-6) / 1e12
        pad = "*" if m8 != m else " "
        lines.append(f"{m:>5} {n:>6} {k:>6} | {t_asm:8.2f} {t_tri:8.2f} | {t_bf16:8.2f} "
                     f"{t_comp:8.2f} {t_fp8:7.2f}{pad} | {gbs:8.0f} {100 * gbs / bw:5.0f}% "
                     f"{100 * gbs_tri / bw:8.0f}% | {tfs:8.1f} {100 * tfs / rate:5.0f}%")
        print(lines[-1], flush=True)
    lines.append(f"{'T':>5} {'H*N':>6} {'K':>6} | {'fp8':>8} {'mxfp4':>8} | {'bf16 bmm':>8}")
    for t, hn, k in sorted({(k[2], k[3], k[4]) for k in ours if k[0] == "bmm"}):
        h = 128
        n = hn // h
        w = [torch.randn(h, k, n, device="cuda").to(torch.bfloat16)
             for _ in range(copies_for(h * n * k * 2))]
        a = torch.randn(h, t, k, device="cuda").to(torch.bfloat16)
        nc = len(w)
        t_bmm = time_us(lambda i: torch.bmm(a, w[i % nc]))
        lines.append(f"{t:>5} {hn:>6} {k:>6} | {ours[('bmm', 'fp8', t, hn, k)][0]:8.2f} "
                     f"{ours[('bmm', 'mxfp4', t, hn, k)][0]:8.2f} | {t_bmm:8.2f}")
    lines.append("decode kernels (us; GB/s of weight bytes, % of copy bandwidth):")
    for key in sorted(k for k in ours if ":" in k[1]):
        us, wbytes = ours[key]
        gbs = wbytes / (us * 1e-6) / 1e9
        lines.append(f"{key[1]:>18} M={key[2]:<3} N={key[3]:<6} K={key[4]:<6} {us:9.2f} us "
                     f"{gbs:6.0f} GB/s {100 * gbs / bw:4.0f}%")
    text = "\n".join(lines)
    print(text)
    if out:
        out.write(text + "\n")


if __name__ == "__main__":
    main()
