"""The binding with torch tensors (skipped, exit code 77, where torch is not installed): the
README's Python snippet runs as written; torch tensors through the binding give the same bytes as
Python buffers, in each KV cache format (the bf16 cache also as the engine's one [2, ...] tensor,
the fp8_tensor cache as torch.float8_e4m3fn codes); torch's own bad input (dtype, layout, device)
raises a ValueError naming the argument with nothing written. Where the plugin has a GPU backend
and a GPU is present (the GPU build, on the GPU machine): a checkpoint's layers decoded through the
binding on CUDA tensors equal `atom-run --checkpoint --backend gpu [--kv-cache F]` bit for bit (the
fp8_row, bf16 and fp8_tensor caches), a call captured in a torch.cuda.CUDAGraph and replayed equals
the eager call bit for bit, and host tensors are refused. Same environment as test_binding.py."""
import array
import ctypes
import os
import re
import subprocess
import sys
import unittest

try:
    import torch
except ImportError:
    sys.exit(77)

import atom
from test_binding import atom_run_decode, decode_through_binding

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKPOINT = os.path.join(os.environ.get("ATOM_HF_DATA", ""), "qwen3-30b-a3b-tiny", "bf16")


class Torch(unittest.TestCase):
    def test_readme_snippet(self):
        with open(os.path.join(ROOT, "README.md")) as f:
            readme = f.read()
        section = readme[readme.index("## Python: host engines"):]
        snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
        run = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True,
                             text=True)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("Qwen3MoeForCausalLM", run.stdout)

    def test_tensors_equal_buffers(self):
        layer = atom.load_layer(CHECKPOINT, 1, max_tokens=3, backend="host")
        h, bs = layer.hidden, layer.block_size
        g = torch.Generator().manual_seed(5)
        x = torch.randn(3, h, generator=g).bfloat16()
        residual = torch.randn(3, h, generator=g).bfloat16()
        rows = 3 * bs * layer.kv_heads
        codes = torch.randint(0, 126, (2, rows, layer.head_dim), generator=g, dtype=torch.uint8)
        scales = torch.rand(2, rows, generator=g) * 0.01
        lens = [5, 1, 3]
        table = [0, 1, 2]
        slots = [4, bs, 2 * bs + 2]
        positions = [4, 0, 2]

        def bits(t):
            return array.array("H", t.view(torch.int16).numpy().tobytes())

        b_res, b_out = bits(residual), array.array("H", [0x7fc1] * (3 * h))
        b_cache = tuple(array.array(c, t.numpy().tobytes())
                        for c, t in (("B", codes[0]), ("B", codes[1]), ("f", scales[0]),
                                     ("f", scales[1])))
        layer(bits(x), b_res, b_cache, array.array("i", table), array.array("i", lens),
              array.array("q", positions), array.array("q", slots), out=b_out)

        t_cache = (codes[0].clone(), codes[1].clone(), scales[0].clone(), scales[1].clone())
        t_res = residual.clone()
        i32 = lambda v: torch.tensor(v, dtype=torch.int32)
        t_out = layer(x, t_res, t_cache, i32(table), i32(lens), torch.tensor(positions),
                      torch.tensor(slots))
        self.assertEqual(bits(t_out), b_out)
        self.assertEqual(bits(t_res), b_res)
        for t, b in zip(t_cache, b_cache):
            self.assertEqual(t.numpy().tobytes(), b.tobytes())

    def test_kv_cache_formats_tensors_equal_buffers(self):
        """The bf16 cache as vLLM's one [2, num_blocks, block_size, kv_heads, head_dim] tensor and
        the fp8_tensor cache as float8_e4m3fn codes with one-element scales give the bytes that
        Python buffers of the same values give."""
        g = torch.Generator().manual_seed(7)
        lens, table, slots_of = [5, 1], [0, 1], lambda bs: [4, bs]
        for kv in ("bf16", "fp8_tensor"):
            with self.subTest(kv_cache=kv):
                layer = atom.load_layer(CHECKPOINT, 1, max_tokens=2, backend="host", kv_cache=kv)
                h, bs = layer.hidden, layer.block_size
                shape = (2, bs, layer.kv_heads, layer.head_dim)
                x = torch.randn(2, h, generator=g).bfloat16()
                residual = torch.randn(2, h, generator=g).bfloat16()
                if kv == "bf16":
                    t_cache = torch.randn((2,) + shape, generator=g).bfloat16()
                    b_cache = tuple(array.array("H", t.view(torch.int16).numpy().tobytes())
                                    for t in t_cache)
                    t_arg = t_cache
                else:
                    codes = torch.randint(0, 126, (2,) + shape, generator=g, dtype=torch.uint8)
                    scales = (torch.tensor([0.03]), torch.tensor([0.02]))
                    b_cache = (array.array("B", codes[0].numpy().tobytes()),
                               array.array("B", codes[1].numpy().tobytes()),
                               array.array("f", [scales[0].item()]),
                               array.array("f", [scales[1].item()]))
                    t_cache = codes.view(torch.float8_e4m3fn)
                    t_arg = (t_cache[0], t_cache[1]) + scales
                bits = lambda t: array.array("H", t.contiguous().view(torch.int16).numpy().tobytes())
                b_res, b_out = bits(residual), array.array("H", [0x7fc1] * (2 * h))
                layer(bits(x), b_res, b_cache, array.array("i", table), array.array("i", lens),
                      array.array("q", [4, 0]), array.array("q", slots_of(bs)), out=b_out)
                t_res = residual.clone()
                t_out = layer(x, t_res, t_arg, torch.tensor(table, dtype=torch.int32),
                              torch.tensor(lens, dtype=torch.int32), torch.tensor([4, 0]),
                              torch.tensor(slots_of(bs)))
                self.assertEqual(bits(t_out), b_out)
                self.assertEqual(bits(t_res), b_res)
                raw = t_cache.view(torch.uint8) if kv == "fp8_tensor" else t_cache.view(torch.int16)
                self.assertEqual(raw[0].numpy().tobytes(), b_cache[0].tobytes())
                self.assertEqual(raw[1].numpy().tobytes(), b_cache[1].tobytes())
        layer = atom.load_layer(CHECKPOINT, 1, max_tokens=2, backend="host", kv_cache="bf16")
        with self.assertRaises(ValueError) as e:
            layer(torch.zeros(1, layer.hidden, dtype=torch.bfloat16),
                  torch.zeros(1, layer.hidden, dtype=torch.bfloat16),
                  torch.zeros(3, 2, layer.block_size, layer.kv_heads, layer.head_dim,
                              dtype=torch.bfloat16), torch.tensor([0], dtype=torch.int32),
                  torch.tensor([1], dtype=torch.int32), torch.tensor([0]), torch.tensor([0]))
        self.assertIn("cache has shape (3, 2,", str(e.exception))

    def test_bad_tensors(self):
        layer = atom.load_layer(CHECKPOINT, 1, max_tokens=2, backend="host")
        h, bs = layer.hidden, layer.block_size
        rows = 2 * bs * layer.kv_heads
        cache = (torch.zeros(rows, layer.head_dim, dtype=torch.uint8),
                 torch.zeros(rows, layer.head_dim, dtype=torch.uint8), torch.zeros(rows),
                 torch.zeros(rows))
        i32 = lambda *v: torch.tensor(v, dtype=torch.int32)
        out = torch.full((2, h), float("nan"), dtype=torch.bfloat16)
        batch = dict(block_table=i32(0, 1), context_lens=i32(1, 1),
                     positions=torch.tensor([0, 0]), slots=torch.tensor([0, bs]))
        x = torch.zeros(2, h, dtype=torch.bfloat16)
        residual = torch.ones(2, h, dtype=torch.bfloat16)
        cases = [
            (dict(x=torch.zeros(2, h)), "x has dtype torch.float32"),
            (dict(x=torch.zeros(h, 2, dtype=torch.bfloat16).t()), "x is not contiguous"),
            (dict(slots=torch.tensor([0, bs], dtype=torch.int32)), "slots has dtype torch.int32"),
        ]
        if torch.cuda.is_available():
            cases.append((dict(residual=residual.cuda()), "residual is on cuda:0"))
        for change, says in cases:
            with self.subTest(says=says):
                a = dict(x=x, residual=residual, cache=cache, **batch)
                a.update(change)
                with self.assertRaises(ValueError) as e:
                    layer(a.pop("x"), a.pop("residual"), a.pop("cache"), out=out, **a)
                self.assertIn(says, str(e.exception))
                self.assertTrue(out.isnan().all())
                self.assertTrue((residual == 1).all())


class CudaBuffers:
    """torch tensors on the GPU for decode_through_binding."""
    dtypes = {"bf16": torch.int16, "int32": torch.int32, "int64": torch.int64,
              "fp8": torch.uint8, "float": torch.float32}

    def zeros(self, kind, n):
        return self._typed(kind, torch.zeros(n, dtype=self.dtypes[kind], device="cuda"))

    def full(self, kind, n, value):
        return self._typed(kind, torch.full((n,), value, dtype=self.dtypes[kind], device="cuda"))

    def of(self, kind, values):
        return self._typed(kind, torch.tensor(values, dtype=self.dtypes[kind], device="cuda"))

    def of_bytes(self, kind, data):
        host = torch.frombuffer(bytearray(data), dtype=self.dtypes[kind])
        return self._typed(kind, host.cuda())

    def to_bytes(self, t):
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        return t.cpu().numpy().tobytes()

    def _typed(self, kind, t):
        return t.view(torch.bfloat16) if kind == "bf16" else t


def gpu_layer(checkpoint, layer, **options):
    """The layer on the GPU backend, or None where the plugin or the machine has none."""
    if not torch.cuda.is_available():
        return None
    try:
        return atom.load_layer(checkpoint, layer, backend="gpu", **options)
    except atom.PluginError as e:
        if e.status_name == "NO_INSTANCE":
            return None
        raise


@unittest.skipUnless(gpu_layer(CHECKPOINT, 1, max_tokens=1), "no GPU backend")
class Cuda(unittest.TestCase):
    def test_decode_equals_atom_run_on_the_gpu(self):
        for model in ("qwen3-30b-a3b-tiny", "deepseek-v3-tiny"):
            for fmt in ("bf16", "fp8", "mxfp4"):
                with self.subTest(model=model, format=fmt):
                    want, inputs = atom_run_decode(model, fmt, 3, "gpu")
                    got = decode_through_binding(
                        os.path.join(os.environ["ATOM_HF_DATA"], model, fmt), inputs, 3,
                        CudaBuffers(), backend="gpu")
                    for name, data in got.items():
                        self.assertTrue(data == want[name][2], f"{name} differs from atom-run's")

    def test_kv_cache_formats_equal_atom_run_on_the_gpu(self):
        """A Qwen3 checkpoint's layers through the binding on a bf16 cache and on an fp8_tensor
        cache (CUDA tensors; the scales, device tensors of one element, 1 as atom-run's) equal
        `atom-run --checkpoint --backend gpu --kv-cache` of the same format, bit for bit."""
        for kv in ("bf16", "fp8_tensor"):
            for fmt in ("bf16", "fp8", "mxfp4"):
                with self.subTest(kv_cache=kv, format=fmt):
                    want, inputs = atom_run_decode("qwen3-30b-a3b-tiny", fmt, 3, "gpu",
                                                   kv_cache=kv)
                    got = decode_through_binding(
                        os.path.join(os.environ["ATOM_HF_DATA"], "qwen3-30b-a3b-tiny", fmt),
                        inputs, 3, CudaBuffers(), backend="gpu", kv_cache=kv)
                    for name, data in got.items():
                        self.assertTrue(data == want[name][2], f"{name} differs from atom-run's")

    def test_graph_capture_equals_eager(self):
        layer = gpu_layer(CHECKPOINT, 1, max_tokens=4)
        self.assertEqual(layer.backend, "gpu")
        h, bs = layer.hidden, layer.block_size
        g = torch.Generator().manual_seed(9)
        rows = 4 * bs * layer.kv_heads
        state = dict(
            x=torch.randn(4, h, generator=g).bfloat16(),
            residual=torch.randn(4, h, generator=g).bfloat16(),
            key=torch.randint(0, 126, (rows, layer.head_dim), generator=g, dtype=torch.uint8),
            value=torch.randint(0, 126, (rows, layer.head_dim), generator=g, dtype=torch.uint8),
            key_scale=torch.rand(rows, generator=g) * 0.01,
            value_scale=torch.rand(rows, generator=g) * 0.01)
        i32 = lambda *v: torch.tensor(v, dtype=torch.int32, device="cuda")
        # Two sequences of two query tokens (speculative decoding), contexts 6 and 3.
        batch = dict(block_table=i32(0, 1, 2, 3), context_lens=i32(6, 3),
                     positions=torch.tensor([4, 5, 1, 2], device="cuda"),
                     slots=torch.tensor([4, 5, 2 * bs + 1, 2 * bs + 2], device="cuda"),
                     query_start=i32(0, 2, 4))

        def fresh():
            return {k: v.cuda() for k, v in state.items()}

        def call(s, out):
            layer(s["x"], s["residual"], (s["key"], s["value"], s["key_scale"],
                                          s["value_scale"]), out=out, **batch)

        eager = fresh()
        eager_out = torch.empty(4, h, dtype=torch.bfloat16, device="cuda")
        call(eager, eager_out)
        replayed = fresh()
        graph_out = torch.empty(4, h, dtype=torch.bfloat16, device="cuda")
        # The warm-up torch prescribes before a capture, on the capture stream: it also sizes the
        # ops' scratch of that stream (atom_plugin.h, Streams).
        capture = torch.cuda.Stream()
        capture.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(capture):
            call(fresh(), graph_out)
        torch.cuda.current_stream().wait_stream(capture)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=capture):
            call(replayed, graph_out)
        for k in replayed:  # capture ran nothing: restore the state, then replay
            replayed[k].copy_(state[k].cuda())
        graph.replay()
        torch.cuda.synchronize()
        bits = lambda t: t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        self.assertTrue(torch.equal(bits(graph_out), bits(eager_out)))
        for k in eager:
            self.assertTrue(torch.equal(bits(replayed[k]), bits(eager[k])), k)
        self.assertFalse(eager_out.float().isnan().any().item())

    def test_host_tensor_for_the_gpu(self):
        layer = gpu_layer(CHECKPOINT, 1, max_tokens=1)
        with self.assertRaises(ValueError) as e:
            layer(torch.zeros(1, layer.hidden, dtype=torch.bfloat16),
                  torch.zeros(1, layer.hidden, dtype=torch.bfloat16, device="cuda"))
        self.assertIn("x is on cpu; the pipeline runs on the GPU", str(e.exception))


if __name__ == "__main__":
    unittest.main()
