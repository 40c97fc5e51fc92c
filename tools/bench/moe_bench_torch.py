"""PyTorch peers for atom-bench-moe, timed in the same run on the same rows, and the joint table.

Usage: moe_bench_torch.py ATOM_CSV [OUT_TABLE]
Reads the CSV atom-bench-moe wrote (op,model,T,us) and times, in graph replay as atom's rows are
(20 calls captured as one CUDA graph, replayed 10 times, the median per call), the peer of each
row, written as the models' reference code computes it: the router `(x @ w.t()).float()`;
DeepSeek-V3's routing (sigmoid, bias, the sum of each group's two best, the 4 best of 8 groups,
the top 8 of their experts, weights normalized and scaled by 2.5); Qwen3's (float softmax, top 8,
renormalized); SiLU * mul `silu(gate) * up` in bf16 (the peer does not quantize its output to
MXFP4 as atom's does); the combine `(out.view(T, 8, H).float() * w[..., None]).sum(1)` plus the
shared expert's output where the model has one, rounded to bf16.
"""
import csv
import sys

import torch
import torch.nn.functional as F

from torch_timing import capture_graph, replay_ms

CALLS = 20
REPLAYS = 10
TOP_K = 8
MODELS = {
    "deepseek-v3": dict(hidden=7168, experts=256, inter=2048, grouped=True),
    "qwen3-30b-a3b": dict(hidden=2048, experts=128, inter=768, grouped=False),
}


def graph_us(fn):
    graph = capture_graph(fn, calls=CALLS, warmup=CALLS)
    return replay_ms(graph, REPLAYS) * 1000.0 / CALLS


def grouped_topk(logits, bias):
    scores = logits.sigmoid()
    choice = scores + bias
    t = logits.shape[0]
    group_scores = choice.view(t, 8, -1).topk(2, dim=-1)[0].sum(-1)
    group_idx = group_scores.topk(4, dim=-1, sorted=False)[1]
    mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
    keep = mask.unsqueeze(-1).expand(t, 8, choice.shape[1] // 8).reshape(t, -1)
    ids = choice.masked_fill(keep == 0, 0.0).topk(TOP_K, dim=-1, sorted=False)[1]
    w = scores.gather(1, ids)
    return ids, w / (w.sum(-1, keepdim=True) + 1e-20) * 2.5


def softmax_topk(logits):
    p = torch.softmax(logits, dim=-1, dtype=torch.float)
    w, ids = torch.topk(p, TOP_K, dim=-1)
    return ids, w / w.sum(-1, keepdim=True)


def peer_us(op, model, t):
    m = MODELS[model]
    h, e, i = m["hidden"], m["experts"], m["inter"]
    dev = "cuda"
    if op == "router":
        x = torch.randn(t, h, device=dev, dtype=torch.bfloat16)
        w = torch.randn(e, h, device=dev, dtype=torch.bfloat16) * 0.05
        return graph_us(lambda: (x @ w.t()).float())
    if op == "route":
        logits = torch.randn(t, e, device=dev) * 2.0
        bias = torch.randn(e, device=dev) * 0.05
        if m["grouped"]:
            return graph_us(lambda: grouped_topk(logits, bias))
        return graph_us(lambda: softmax_topk(logits))
    if op == "silu":
        gate_up = torch.randn(t * TOP_K, 2 * i, device=dev, dtype=torch.bfloat16)
        return graph_us(lambda: F.silu(gate_up[:, :i]) * gate_up[:, i:])
    if op == "combine":
        out = torch.randn(t * TOP_K, h, device=dev, dtype=torch.bfloat16)
        w = torch.rand(t, TOP_K, device=dev)
        shared = torch.randn(t, h, device=dev, dtype=torch.bfloat16)
        if m["grouped"]:
            return graph_us(
                lambda: ((out.view(t, TOP_K, h).float() * w[..., None]).sum(1) + shared.float())
                .to(torch.bfloat16))
        return graph_us(
            lambda: (out.view(t, TOP_K, h).float() * w[..., None]).sum(1).to(torch.bfloat16))
    raise ValueError(f"unknown op {op!r} in the CSV")


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    rows = list(csv.DictReader(open(args[0])))
    lines = [f"device: {torch.cuda.get_device_name()}",
             "| op | model | T | atom us | torch us | torch / atom |", "|---|---|---|---|---|---|"]
    for r in rows:
        t = int(r["T"])
        ours = float(r["us"])
        peer = peer_us(r["op"], r["model"], t)
        lines.append(f"| {r['op']} | {r['model']} | {t} | {ours:.2f} | {peer:.2f} | "
                     f"{peer / ours:.2f} |")
    print("\n".join(lines), flush=True)
    if len(args) > 1:
        with open(args[1], "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
