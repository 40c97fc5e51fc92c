"""PyTorch peer of atom-bench-allreduce-norm: NCCL all-reduce (torch.distributed) + residual add +
RMSNorm at hidden 7168 on N GPUs (--size N, default 2), timed the same way (median of 25 samples
of 20 back-to-back calls, CUDA events): eager, eager captured in a CUDA graph, and with the add + norm under
torch.compile (the all-reduce stays a collective call). Rank 0 prints.

Usage: python3 tools/bench/allreduce_norm_torch.py [--compile-tokens 1,64,1024,8192]
"""
import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from torch_timing import capture_graph

HIDDEN = 7168
EPS = 1e-6
BATCH = 20
SAMPLES = 25


def median_us(run_batch):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(SAMPLES):
        start.record()
        run_batch()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) * 1000.0 / BATCH)
    samples.sort()
    return samples[len(samples) // 2]


def eager_us(fn):
    for _ in range(10):
        fn()
    torch.cuda.synchronize()

    def run_batch():
        for _ in range(BATCH):
            fn()

    return median_us(run_batch)


def graph_us(fn):
    graph = capture_graph(fn, calls=BATCH, warmup=3)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    return median_us(graph.replay)


def add_norm(x, residual, weight):
    r = x + residual
    return r, F.rms_norm(r, (HIDDEN,), weight, EPS)


def worker(rank, port, compile_tokens, size):
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    compiled = torch.compile(add_norm, dynamic=False)
    if rank == 0:
        print(f"torch {torch.__version__}, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}, {size} ranks")
        print(f"{'T':>6} | {'eager':>9} {'graph':>9} {'compile':>9}   (us per call)")
    gen = torch.Generator(device="cuda").manual_seed(1 + rank)
    t = 1
    while t <= 8192:
        x = torch.randn(t, HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
        residual = torch.randn(t, HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
        weight = torch.randn(HIDDEN, device="cuda", dtype=torch.bfloat16, generator=gen)
        y = torch.empty_like(x)

        def eager():
            y.copy_(x)
            dist.all_reduce(y)
            residual.copy_(y + residual)
            return F.rms_norm(residual, (HIDDEN,), weight, EPS)

        def with_compile():
            y.copy_(x)
            dist.all_reduce(y)
            r, out = compiled(y, residual, weight)
            residual.copy_(r)
            return out

        e = eager_us(eager)
        g = graph_us(eager)
        c = eager_us(with_compile) if t in compile_tokens else float("nan")
        if rank == 0:
            print(f"{t:>6} | {e:9.2f} {g:9.2f} {c:9.2f}", flush=True)
        t *= 2
    dist.barrier()
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile-tokens", default="1,64,1024,8192")
    parser.add_argument("--size", type=int, default=2, help="ranks, one GPU each")
    args = parser.parse_args()
    compile_tokens = {int(v) for v in args.compile_tokens.split(",") if v}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    mp.spawn(worker, args=(port, compile_tokens, args.size), nprocs=args.size)


if __name__ == "__main__":
    main()
