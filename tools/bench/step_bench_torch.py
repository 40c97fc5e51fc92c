"""PyTorch peer of atom-bench-step: the same decode step (T sequences of one query token, every
context of the same length, L MoE decoder layers, each with weights of its own) written in PyTorch
and replayed as one CUDA graph per shape, timed the same way (CUDA events around each replay, the
median after warm-up).

Usage: step_bench_torch.py [--model deepseek-v3,qwen3-30b-a3b] [--tokens 1,4,16,64,256]
                           [--contexts 512,4096,16384] [--formats bf16,fp8] [--layers N]
                           [--compile] [--csv FILE]

The layer, per model (dimensions of the published checkpoints' config.json):
- DeepSeek-V3: RMSNorm, the fused q_a / kv_a projection, q_a and kv_a norms, q_b, RoPE, the latent
  cache row written at the token's slot, absorbed MLA decode over the latent rows gathered through
  the block table (64-token pages), o_proj; RMSNorm, sigmoid routing with the group limit (8
  groups, 4 kept, top 8 of 256, scaled by 2.5), the routed experts through torch._grouped_mm on
  the tokens sorted by expert (only the chosen experts' weights are read), the shared expert.
- Qwen3-30B-A3B: RMSNorm, qkv, per-head q / k norms, RoPE, the bf16 K / V rows written at the
  slot, GQA decode over the rows gathered through the block table (16-token pages), o_proj;
  RMSNorm, softmax top 8 of 128 (renormalized), the routed experts as above.

Formats: "bf16" reads bf16 weights (four times the bytes of atom's MXFP4); "fp8" reads FP8 e4m3
weights with one scale per output row (torch._scaled_mm, torch._scaled_grouped_mm; activations
quantized per row), twice MXFP4's bytes. The peer's caches are bf16 (atom's Qwen3 cache is FP8:
the peer reads about twice its cache bytes). --compile runs each layer through torch.compile
(dynamic shapes, compiled once per model and format) before the capture; without it the graph
replays eager kernels. Prints model,backend,layers,T,ctx,ms_step,ms_layer; rows that torch
cannot run (an op missing from this build) are reported and skipped.
"""
import argparse
import csv
import math
import sys

import torch
import torch.nn.functional as F

from torch_timing import capture_graph, replay_ms

MODELS = {
    "deepseek-v3": dict(attention="mla", hidden=7168, heads=128, q_lora=1536, kv_lora=512,
                        nope=128, rope=64, v_head=128, experts=256, top_k=8, inter=2048,
                        shared=1, groups=8, topk_groups=4, scaling=2.5, block=64,
                        layers=58),
    "qwen3-30b-a3b": dict(attention="gqa", hidden=2048, heads=32, kv_heads=4, head_dim=128,
                          experts=128, top_k=8, inter=768, shared=0, block=16, layers=48),
}
WARMUP = 3
EPS = 1e-6


def rmsnorm(x, w):
    v = x.float()
    return (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + EPS) * w.float()).to(x.dtype)


def rope(x, cos, sin):
    """Neox-style rotation of the last dimension; cos / sin [T, dim / 2] broadcast over heads."""
    half = x.shape[-1] // 2
    a, b = x[..., :half].float(), x[..., half:].float()
    while cos.dim() < a.dim():
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1).to(x.dtype)


class Linear:
    """A weight [N, K] in the peer's format and y = x W^T."""

    def __init__(self, n, k, fmt):
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / math.sqrt(k)
        self.fmt = fmt
        if fmt == "bf16":
            self.w = w
        else:
            amax = w.float().abs().amax(1, keepdim=True).clamp(min=1e-12)
            self.scale = (amax / 448.0).reshape(1, n).contiguous()
            self.w = (w.float() / amax * 448.0).to(torch.float8_e4m3fn)

    def __call__(self, x):
        if self.fmt == "bf16":
            return x @ self.w.t()
        q, s = quant_rows(x)
        return torch._scaled_mm(q, self.w.t(), scale_a=s, scale_b=self.scale,
                                out_dtype=torch.bfloat16)


def quant_rows(x):
    amax = x.float().abs().amax(-1, keepdim=True).clamp(min=1e-12)
    return (x.float() / amax * 448.0).to(torch.float8_e4m3fn), (amax / 448.0).contiguous()


class Experts:
    """E stacked weights [E, N, K]; the rows of the tokens sorted by expert through them."""

    def __init__(self, e, n, k, fmt):
        self.fmt = fmt
        if fmt == "bf16":
            self.w = torch.randn(e, n, k, device="cuda", dtype=torch.bfloat16) / math.sqrt(k)
            return
        # One expert at a time: a float copy of all of them would not fit beside them.
        self.w = torch.empty(e, n, k, device="cuda", dtype=torch.float8_e4m3fn)
        self.scale = torch.empty(e, n, device="cuda", dtype=torch.float32)
        for j in range(e):
            w = torch.randn(n, k, device="cuda") / math.sqrt(k)
            amax = w.abs().amax(1, keepdim=True).clamp(min=1e-12)
            self.scale[j] = (amax / 448.0).reshape(n)
            self.w[j] = (w / amax * 448.0).to(torch.float8_e4m3fn)

    def __call__(self, a, offs):
        if self.fmt == "bf16":
            return torch._grouped_mm(a, self.w.transpose(1, 2), offs=offs)
        q, s = quant_rows(a)
        return torch._scaled_grouped_mm(q, self.w.transpose(1, 2), s.reshape(-1), self.scale,
                                        offs=offs, out_dtype=torch.bfloat16)


class Layer:
    def __init__(self, c, fmt):
        h = c["hidden"]
        self.c = c
        self.in_norm = torch.ones(h, device="cuda", dtype=torch.bfloat16)
        self.post_norm = torch.ones(h, device="cuda", dtype=torch.bfloat16)
        if c["attention"] == "mla":
            qk = c["nope"] + c["rope"]
            self.qkv_a = Linear(c["q_lora"] + c["kv_lora"] + c["rope"], h, fmt)
            self.q_a_norm = torch.ones(c["q_lora"], device="cuda", dtype=torch.bfloat16)
            self.kv_a_norm = torch.ones(c["kv_lora"], device="cuda", dtype=torch.bfloat16)
            self.q_b = Linear(c["heads"] * qk, c["q_lora"], fmt)
            self.w_uk = torch.randn(c["heads"], c["nope"], c["kv_lora"], device="cuda",
                                    dtype=torch.bfloat16) / math.sqrt(c["nope"])
            self.w_uv = torch.randn(c["heads"], c["kv_lora"], c["v_head"], device="cuda",
                                    dtype=torch.bfloat16) / math.sqrt(c["kv_lora"])
            self.o_proj = Linear(h, c["heads"] * c["v_head"], fmt)
        else:
            d = c["head_dim"]
            self.qkv = Linear((c["heads"] + 2 * c["kv_heads"]) * d, h, fmt)
            self.q_norm = torch.ones(d, device="cuda", dtype=torch.bfloat16)
            self.k_norm = torch.ones(d, device="cuda", dtype=torch.bfloat16)
            self.o_proj = Linear(h, c["heads"] * d, fmt)
        e, i = c["experts"], c["inter"]
        self.router = torch.randn(e, h, device="cuda", dtype=torch.bfloat16) / math.sqrt(h)
        self.bias = torch.randn(e, device="cuda") * 0.1
        self.gate_up = Experts(e, 2 * i, h, fmt)
        self.down = Experts(e, h, i, fmt)
        if c["shared"]:
            self.shared_gate_up = Linear(2 * i * c["shared"], h, fmt)
            self.shared_down = Linear(h, i * c["shared"], fmt)

    def attention(self, x, cache, table, slots, cos, sin):
        c = self.c
        t = x.shape[0]
        if c["attention"] == "mla":
            qkv = self.qkv_a(x)
            q_a, kv_c, k_pe = qkv.split([c["q_lora"], c["kv_lora"], c["rope"]], -1)
            q = self.q_b(rmsnorm(q_a, self.q_a_norm)).view(t, c["heads"], -1)
            q_nope, q_pe = q.split([c["nope"], c["rope"]], -1)
            q_pe, k_pe = rope(q_pe, cos, sin), rope(k_pe, cos, sin)
            row = torch.cat([rmsnorm(kv_c, self.kv_a_norm), k_pe], -1)
            cache.view(-1, row.shape[-1]).index_copy_(0, slots, row)
            rows = cache[table].view(t, -1, row.shape[-1])  # [T, ctx, 576]
            q_lat = torch.bmm(q_nope.transpose(0, 1), self.w_uk).transpose(0, 1)  # [T, H, 512]
            query = torch.cat([q_lat, q_pe], -1)  # [T, H, 576]
            scale = 1.0 / math.sqrt(c["nope"] + c["rope"])
            p = torch.softmax(torch.bmm(query, rows.transpose(1, 2)).float() * scale, -1)
            o_lat = torch.bmm(p.to(torch.bfloat16), rows[..., : c["kv_lora"]])  # [T, H, 512]
            o = torch.bmm(o_lat.transpose(0, 1), self.w_uv).transpose(0, 1)  # [T, H, 128]
            return self.o_proj(o.reshape(t, -1))
        d, kvh, heads = c["head_dim"], c["kv_heads"], c["heads"]
        q, k, v = self.qkv(x).split([heads * d, kvh * d, kvh * d], -1)
        q = rope(rmsnorm(q.view(t, heads, d), self.q_norm), cos, sin)
        k = rope(rmsnorm(k.view(t, kvh, d), self.k_norm), cos, sin)
        key, value = cache
        key.view(-1, kvh, d).index_copy_(0, slots, k)
        value.view(-1, kvh, d).index_copy_(0, slots, v.view(t, kvh, d))
        ks = key[table].view(t, -1, kvh, d).permute(0, 2, 1, 3)  # [T, kvh, ctx, d]
        vs = value[table].view(t, -1, kvh, d).permute(0, 2, 1, 3)
        qg = q.view(t, kvh, heads // kvh, d)
        s = torch.matmul(qg, ks.transpose(-1, -2)).float() / math.sqrt(d)
        o = torch.matmul(torch.softmax(s, -1).to(torch.bfloat16), vs)  # [T, kvh, g, d]
        return self.o_proj(o.reshape(t, -1))

    def moe(self, x):
        c = self.c
        t, k, e, i = x.shape[0], c["top_k"], c["experts"], c["inter"]
        logits = x.float() @ self.router.float().t()
        if c["attention"] == "mla":
            s = torch.sigmoid(logits)
            biased = s + self.bias
            g = biased.view(t, c["groups"], -1).topk(2, -1).values.sum(-1)
            keep = torch.zeros_like(g).scatter_(1, g.topk(c["topk_groups"], -1).indices, 1.0)
            mask = keep.repeat_interleave(e // c["groups"], 1)
            ids = biased.masked_fill(mask == 0, float("-inf")).topk(k, -1).indices
            wts = s.gather(1, ids)
            wts = wts / wts.sum(-1, keepdim=True) * c["scaling"]
        else:
            p = torch.softmax(logits, -1)
            wts, ids = p.topk(k, -1)
            wts = wts / wts.sum(-1, keepdim=True)
        flat = ids.flatten()
        order = flat.argsort()
        tok = order // k
        counts = torch.zeros(e, device="cuda", dtype=torch.int32).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = counts.cumsum(0).to(torch.int32)
        gu = self.gate_up(x[tok], offs)
        act = (F.silu(gu[:, :i].float()) * gu[:, i:].float()).to(torch.bfloat16)
        down = self.down(act, offs)
        out = torch.zeros(t, c["hidden"], device="cuda", dtype=torch.float32)
        out.index_add_(0, tok, down.float() * wts.flatten()[order].unsqueeze(1))
        if c["shared"]:
            su = self.shared_gate_up(x)
            half = su.shape[-1] // 2
            sh = (F.silu(su[:, :half].float()) * su[:, half:].float()).to(torch.bfloat16)
            out += self.shared_down(sh).float()
        return out.to(torch.bfloat16)

    def __call__(self, x, residual, cache, table, slots, cos, sin):
        residual = residual + x
        a = self.attention(rmsnorm(residual, self.in_norm), cache, table, slots, cos, sin)
        residual = residual + a
        return self.moe(rmsnorm(residual, self.post_norm)), residual


def layer_bytes(c, fmt):
    e, i, h = c["experts"], c["inter"], c["hidden"]
    per = 2 if fmt == "bf16" else 1
    experts = 3 * e * i * h * per
    if c["attention"] == "mla":
        attn = (c["q_lora"] + c["kv_lora"] + c["rope"]) * h + c["heads"] * (
            c["nope"] + c["rope"]) * c["q_lora"] + h * c["heads"] * c["v_head"]
        attn = attn * per + 2 * 2 * c["heads"] * c["nope"] * c["kv_lora"]
    else:
        attn = ((c["heads"] + 2 * c["kv_heads"]) * c["head_dim"] * h + h * c["heads"] *
                c["head_dim"]) * per
    return experts + attn + 3 * c["shared"] * i * h * per


def cache_row_bytes(c):
    if c["attention"] == "mla":
        return 2 * (c["kv_lora"] + c["rope"])
    return 2 * 2 * c["kv_heads"] * c["head_dim"]


def make_cache(c, blocks):
    if c["attention"] == "mla":
        return torch.randn(blocks, c["block"], c["kv_lora"] + c["rope"], device="cuda",
                           dtype=torch.bfloat16)
    shape = (blocks, c["block"], c["kv_heads"], c["head_dim"])
    return (torch.randn(shape, device="cuda", dtype=torch.bfloat16),
            torch.randn(shape, device="cuda", dtype=torch.bfloat16))


def time_shape(c, layers, calls, t, ctx, replays):
    bs = c["block"]
    cols = (ctx + bs - 1) // bs
    blocks = t * cols
    caches = [make_cache(c, blocks) for _ in layers]
    table = torch.randperm(blocks, device="cuda").view(t, cols)
    pos = torch.full((t,), ctx - 1, device="cuda", dtype=torch.int64)
    slots = table[:, (ctx - 1) // bs].to(torch.int64) * bs + (ctx - 1) % bs
    rot = c["rope"] if c["attention"] == "mla" else c["head_dim"]
    inv = 1.0 / (10000.0 ** (torch.arange(0, rot, 2, device="cuda").float() / rot))
    freqs = pos.float().unsqueeze(1) * inv
    cos, sin = freqs.cos(), freqs.sin()
    x0 = torch.randn(t, c["hidden"], device="cuda", dtype=torch.bfloat16)
    r0 = torch.zeros_like(x0)

    def step():
        x, r = x0, r0
        for call, cache in zip(calls, caches):
            x, r = call(x, r, cache, table, slots, cos, sin)
        return x

    graph = capture_graph(step)
    ms = replay_ms(graph, replays, warmup=WARMUP)
    del graph, caches
    return ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="deepseek-v3,qwen3-30b-a3b")
    ap.add_argument("--tokens", default="1,4,16,64,256")
    ap.add_argument("--contexts", default="512,4096,16384")
    ap.add_argument("--formats", default="bf16,fp8")
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--csv", default="")
    a = ap.parse_args()
    tokens = [int(v) for v in a.tokens.split(",")]
    contexts = [int(v) for v in a.contexts.split(",")]
    out = csv.writer(open(a.csv, "w", newline="")) if a.csv else None
    header = ["model", "backend", "layers", "T", "ctx", "ms_step", "ms_layer"]
    if out:
        out.writerow(header)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(",".join(header))
    for name in a.model.split(","):
        c = MODELS[name]
        for fmt in a.formats.split(","):
            torch.cuda.empty_cache()
            free, _ = torch.cuda.mem_get_info()
            largest = max(tokens) * (max(contexts) + c["block"]) * cache_row_bytes(c) * 2
            fit = int((0.85 * free - (4 << 30)) // (layer_bytes(c, fmt) + largest))
            n = min(a.layers or c["layers"], c["layers"], max(fit, 1))
            try:
                layers = [Layer(c, fmt) for _ in range(n)]
            except torch.OutOfMemoryError:
                print(f"{name},torch-{fmt}: {n} layers do not fit", file=sys.stderr)
                continue
            calls = layers
            mode = "graph"
            if a.compile:
                compiled = torch.compile(Layer.__call__, dynamic=True)
                calls = [lambda *args, l=l: compiled(l, *args) for l in layers]
                mode = "compile+graph"
            for ctx in contexts:
                for t in tokens:
                    try:
                        ms = time_shape(c, layers, calls, t, ctx, a.replays)
                    except Exception as e:  # an op this torch build lacks, or memory
                        print(f"{name},torch-{fmt},{n},{t},{ctx}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160]}", file=sys.stderr)
                        torch.cuda.empty_cache()
                        continue
                    row = [name, f"torch-{fmt}-{mode}", n, t, ctx, f"{ms:.4f}", f"{ms / n:.4f}"]
                    print(",".join(str(v) for v in row), flush=True)
                    if out:
                        out.writerow(row)
            del layers, calls
    return 0


if __name__ == "__main__":
    sys.exit(main())
