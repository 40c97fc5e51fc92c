"""PyTorch peer of atom-bench-io-gpu: the same shards loaded onto the GPU by safetensors'
load_file(device="cuda") when the package is installed, and by a plain mmap + torch.frombuffer +
.to("cuda") per tensor (pageable and pinned). Rates are data bytes over wall time, medians.

    python3 io_gpu_bench_torch.py <dir of shards written by atom-bench-io-gpu --keep> [runs]
"""
import glob
import json
import mmap
import os
import statistics
import struct
import sys
import time

import torch


def data_bytes(files):
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        total += sum(v["data_offsets"][1] - v["data_offsets"][0]
                     for k, v in header.items() if k != "__metadata__")
    return total


def load_mmap(files, pinned):
    out = {}
    for f in files:
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        raw = torch.frombuffer(memoryview(mm), dtype=torch.uint8)
        for name, v in header.items():
            if name == "__metadata__":
                continue
            b, e = v["data_offsets"]
            t = raw[8 + n + b:8 + n + e]
            if pinned:
                out[name] = t.pin_memory().to("cuda", non_blocking=True)
            else:
                out[name] = t.to("cuda")
        del raw
    torch.cuda.synchronize()
    return out


def main():
    folder = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    gb = data_bytes(files) / 1e9
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {len(files)} shards, "
          f"{gb:.2f} GB")
    loaders = {
        "torch: mmap + frombuffer + .to(cuda), pageable": lambda: load_mmap(files, False),
        "torch: mmap + frombuffer + pin_memory + .to(cuda)": lambda: load_mmap(files, True),
    }
    try:
        from safetensors.torch import load_file
        loaders["safetensors.torch.load_file(device=cuda)"] = lambda: {
            k: v for f in files for k, v in load_file(f, device="cuda").items()}
    except ImportError:
        print("safetensors is not installed: its load_file is not measured")
    for what, load in loaders.items():
        load()  # warm-up
        rates = []
        for _ in range(runs):
            start = time.perf_counter()
            loaded = load()
            torch.cuda.synchronize()
            rates.append(gb / (time.perf_counter() - start))
            del loaded
        print(f"{what:52s} {statistics.median(rates):7.2f} GB/s {min(rates):7.2f} "
              f"{max(rates):7.2f}")


if __name__ == "__main__":
    main()
