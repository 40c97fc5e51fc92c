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


def capture_graph(fn, calls=1, warmup=2):
    """A CUDA graph of `calls` calls of fn(), after `warmup` eager calls on a side stream (which
    allocate what the calls need outside the graph's pool); replay it with .replay()."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph


def replay_ms(graph, replays, warmup=1):
    """Median milliseconds of one replay of `graph`, over `replays` replays back to back, each
    between two CUDA events, after `warmup` replays."""
    for _ in range(warmup):
        graph.replay()
    events = [torch.cuda.Event(enable_timing=True) for _ in range(replays + 1)]
    for r in range(replays):
        events[r].record()
        graph.replay()
    events[replays].record()
    events[replays].synchronize()
    ms = sorted(events[r].elapsed_time(events[r + 1]) for r in range(replays))
    return ms[len(ms) // 2]
