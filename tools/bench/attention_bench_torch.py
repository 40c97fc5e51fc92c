"""PyTorch peers for atom-bench-attention, timed on the same shapes in the same run.

Usage: attention_bench_torch.py
MLA decode (absorbed: scores over the 576-wide latent rows, values their first 512) and Qwen3 GQA
decode over an FP8 cache with per-(token, head) scales, both gathering rows through a block table,
in eager mode and under torch.compile. Times are medians of batches of 20 calls after warm-up;
caches rotate over copies that exceed the L2 cache. Prints kind,heads,b,s_q,ctx,eager_us,compile_us.
"""
import torch

from torch_timing import copies_for, time_us


def mla(q, q_pe, cache, table, scale):
    t, heads, _ = q.shape
    bs = cache.shape[1]
    rows = cache[table].reshape(t, -1, 576).float()  # [T, ctx, 576]
    query = torch.cat([q, q_pe], dim=-1).float()  # [T, H, 576]
    p = torch.softmax(torch.bmm(query, rows.transpose(1, 2)) * scale, dim=-1)
    return torch.bmm(p, rows[..., :512]).to(torch.bfloat16)


def gqa(q, key, value, key_scale, value_scale, table, scale):
    t, q_heads, dim = q.shape
    kv_heads = key.shape[2]
    k = (key[table].float() * key_scale[table].unsqueeze(-1)).reshape(t, -1, kv_heads, dim)
    v = (value[table].float() * value_scale[table].unsqueeze(-1)).reshape(t, -1, kv_heads, dim)
    k = k.permute(0, 2, 1, 3).repeat_interleave(q_heads // kv_heads, dim=1)
    v = v.permute(0, 2, 1, 3).repeat_interleave(q_heads // kv_heads, dim=1)
    s = torch.matmul(q.float().unsqueeze(2), k.transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(s, dim=-1), v).squeeze(2).to(torch.bfloat16)


def bench_mla(heads, sequences, per, ctx, compiled):
    """`sequences` sequences of `per` query tokens; each query token reads its sequence's rows
    through its own copy of the sequence's block-table row (the peer has no causal offset)."""
    bs = 64
    cols = (ctx + bs - 1) // bs
    blocks = sequences * cols
    caches = [torch.randn(blocks, bs, 576, device="cuda").to(torch.bfloat16)
              for _ in range(copies_for(blocks * bs * 576 * 2))]
    table = torch.randperm(blocks, device="cuda").reshape(sequences, cols)
    table = table.repeat_interleave(per, dim=0)
    t = sequences * per
    q = torch.randn(t, heads, 512, device="cuda").to(torch.bfloat16)
    q_pe = torch.randn(t, heads, 64, device="cuda").to(torch.bfloat16)
    eager = time_us(lambda i: mla(q, q_pe, caches[i % len(caches)], table, 0.0721))
    comp = time_us(lambda i: compiled(q, q_pe, caches[i % len(caches)], table, 0.0721))
    print(f"mla,{heads},{sequences},{per},{ctx},{eager:.2f},{comp:.2f}", flush=True)


def bench_gqa(t, ctx, compiled):
    q_heads, kv_heads, dim, bs = 32, 4, 128, 16
    cols = (ctx + bs - 1) // bs
    blocks = t * cols
    n = copies_for(blocks * bs * kv_heads * (2 * dim + 8))
    caches = []
    for _ in range(n):
        key = torch.randn(blocks, bs, kv_heads, dim, device="cuda").to(torch.float8_e4m3fn)
        value = torch.randn(blocks, bs, kv_heads, dim, device="cuda").to(torch.float8_e4m3fn)
        ks = torch.full((blocks, bs, kv_heads), 0.004, device="cuda")
        caches.append((key, value, ks, ks.clone()))
    table = torch.randperm(blocks, device="cuda").reshape(t, cols)
    q = torch.randn(t, q_heads, dim, device="cuda").to(torch.bfloat16)
    eager = time_us(lambda i: gqa(q, *caches[i % n], table, 0.0884))
    comp = time_us(lambda i: compiled(q, *caches[i % n], table, 0.0884))
    print(f"gqa,{q_heads},{t},1,{ctx},{eager:.2f},{comp:.2f}", flush=True)


def main():
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
    print("kind,heads,b,s_q,ctx,eager_us,compile_us")
    mla_c = torch.compile(mla, dynamic=True)
    gqa_c = torch.compile(gqa, dynamic=True)
    # The shapes of atom-bench-attention, in its order.
    for b in (1, 16, 64, 128):
        for ctx in (4096, 16384):
            bench_mla(16, b, 1, ctx, mla_c)
    bench_mla(128, 1, 1, 4096, mla_c)
    for ctx in (4096, 8192):
        for heads in (16, 32, 64, 128):
            for per in (1, 2):
                bench_mla(heads, 128, per, ctx, mla_c)
    for ctx in (4096, 16384):
        bench_gqa(1, ctx, gqa_c)
    for t in (4, 16, 64):
        bench_gqa(t, 4096, gqa_c)


if __name__ == "__main__":
    main()
