"""PyTorch peers of atom-bench-norm: the same kernels and shapes in eager mode and under
torch.compile, timed the same way (median of 25 batches of 20 back-to-back calls, CUDA events).

Usage: python3 tools/bench/norm_bench_torch.py [--compile-budget SECONDS]
"""
import argparse
import time

import torch

EPS = 1e-6
dev = "cuda"


def time_us(fn):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    samples = []
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(25):
        start.record()
        for _ in range(20):
            fn()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) * 1000.0 / 20)
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


E2M1_BOUNDS = None


def mxfp4_quant(y):
    t, c = y.shape
    g = y.reshape(t, -1, 32)
    amax = g.abs().amax(-1, keepdim=True)
    e = torch.floor(torch.log2(amax)) - 2
    scale = torch.exp2(e)
    v = g / scale
    bounds = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], device=y.device)
    code = torch.bucketize(v.abs(), bounds).to(torch.uint8) | ((v < 0).to(torch.uint8) << 3)
    code = code.reshape(t, c)
    packed = code[:, 0::2] | (code[:, 1::2] << 4)
    return packed, (e + 127).to(torch.uint8)


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
    g = torch.Generator(device=dev).manual_seed(0)

    def r(*shape):
        return (torch.rand(*shape, device=dev, generator=g) * 4 - 2).bfloat16()

    for t in (1, 64, 4096):
        yield "rms_norm bf16", f"[{t}, 7168]", rms_bf16, (r(t, 7168), r(7168))
    for t in (1, 4096):
        yield "rms_norm bf16", f"[{t}, 2048]", rms_bf16, (r(t, 2048), r(2048))
    for t in (1, 4096):
        yield "add_rms_norm bf16", f"[{t}, 7168]", add_rms_bf16, (r(t, 7168), r(t, 7168), r(7168))
    for t in (1, 4096):
        yield "rms_norm fp8/token", f"[{t}, 7168]", rms_fp8_token, (r(t, 7168), r(7168))
    for t in (1, 4096):
        yield "rms_norm fp8/1x128", f"[{t}, 7168]", rms_fp8_group, (r(t, 7168), r(7168))
    for t in (1, 4096):
        yield "add_rms_norm mxfp4", f"[{t}, 7168]", add_rms_mxfp4, (r(t, 7168), r(t, 7168), r(7168))
    for t in (1, 4096):
        yield "quantize fp8/token", f"[{t}, 7168]", quant_token, (r(t, 7168),)
    for t in (1, 4096):
        yield "quantize fp8/1x128", f"[{t}, 7168]", quant_group, (r(t, 7168),)
    for t in (1, 4096):
        yield "quantize mxfp4", f"[{t}, 7168]", quant_mx, (r(t, 7168),)
    for t in (1, 4096):
        yield "ds qk_norm_fused bf16", f"[{t}, 2112]", ds_qk_bf16, (r(t, 2112), r(1536), r(512))
    for t in (1, 4096):
        yield "ds qk_norm_fused mxfp4", f"[{t}, 2112]", ds_qk_mx, (r(t, 2112), r(1536), r(512))
    for t in (1, 64, 4096):
        blocks = t // 16 + 1
        args = (r(t, 5120), r(128), r(128), torch.arange(t, device=dev) * 7919 % 32768,
                torch.rand(32768, 128, device=dev, generator=g),
                torch.arange(t, device=dev),
                torch.empty(blocks, 16, 4, 128, device=dev, dtype=torch.float8_e4m3fn),
                torch.empty(blocks, 16, 4, 128, device=dev, dtype=torch.float8_e4m3fn),
                torch.empty(blocks, 16, 4, device=dev), torch.empty(blocks, 16, 4, device=dev))
        yield "qwen qk fused", f"T={t}", qwen_fused, args


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile-budget", type=float, default=240.0)
    opts = ap.parse_args()
    print("device:", torch.cuda.get_device_name(0), "torch", torch.__version__)
    x = torch.empty(32768 * 16384, dtype=torch.bfloat16, device=dev)
    y = torch.empty_like(x)
    us = time_us(lambda: y.copy_(x))
    print(f"{'copy (torch copy_)':30s} {'1 GiB':16s} {us:9.2f} us {2 * x.numel() * 2 / us * 1e-3:8.1f} GB/s")
    del x, y
    began = time.time()
    for name, shape, fn, args in cases():
        eager = time_us(lambda: fn(*args))
        if time.time() - began < opts.compile_budget:
            torch._dynamo.reset()
            compiled = torch.compile(fn, dynamic=False)
            comp = f"{time_us(lambda: compiled(*args)):9.2f} us"
        else:
            comp = "  (compile budget spent)"
        print(f"{name:30s} {shape:16s} eager {eager:9.2f} us   compile {comp}", flush=True)


if __name__ == "__main__":
    main()
