"""Timing shared by the PyTorch peer scripts: the method of the C++ benchmarks (medians of
batches of 20 calls after warm-up, CUDA events), and how many copies of an operand to rotate over
so that the copies together exceed the L2 cache."""
import torch

BATCH = 20
BATCHES = 10
ROTATE_BYTES = 256 << 20


def time_us(call):
    """Median microseconds per call; `call(i)` runs the i-th call (i picks the rotating copy)."""
    for i in range(5):
        call(i)
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples, i = [], 0
    for _ in range(BATCHES):
        start.record()
        for _ in range(BATCH):
            call(i)
            i += 1
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) * 1000.0 / BATCH)
    samples.sort()
    return samples[len(samples) // 2]


def copies_for(nbytes):
    """Copies of an operand of `nbytes` to rotate over (2 to 16)."""
    return max(2, min(16, ROTATE_BYTES // max(nbytes, 1) + 1))
