"""The Python binding (python/atom) on the host backend, through libatom_plugin.so:
the ctypes mirrors against the C header's layout, registration under both variables, a
checkpoint's decoder layers decoded through the binding equal to `atom-run --checkpoint` bit for
bit (atom-run's decode is the one tests/model checks against transformers), and bad input raising
an error that names the argument with nothing written.

Environment: ATOM_PLUGIN_LIBRARY (libatom_plugin.so), ATOM_ABI_LAYOUT (the abi_layout program),
ATOM_RUN (atom-run), ATOM_HF_DATA (tests/model/hf); python/ on PYTHONPATH.
"""
import array
import ctypes
import json
import os
import struct
import subprocess
import tempfile
import threading
import unittest

import atom
from atom import _abi

HF = os.environ.get("ATOM_HF_DATA", "")


def read_safetensors(path):
    """{name: (dtype, shape, bytes)} of a safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    return {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


def bf16_to_float(bits):
    return struct.unpack("<f", struct.pack("<I", bits << 16))[0]


class HostBuffers:
    """Python buffers (array.array) for decode_through_binding."""
    codes = {"bf16": "H", "int32": "i", "int64": "q", "fp8": "B", "float": "f"}

    def zeros(self, kind, n):
        return array.array(self.codes[kind], bytes(n * array.array(self.codes[kind]).itemsize))

    def of(self, kind, values):
        return array.array(self.codes[kind], values)

    def of_bytes(self, kind, data):
        return array.array(self.codes[kind], data)

    def to_bytes(self, buf):
        return buf.tobytes()


def decode_through_binding(checkpoint, inputs, layers, buffers=HostBuffers(), reduce=None,
                           **options):
    """atom-run's checkpoint decode (src/model/decode_loop.hpp) through the binding: every step
    each running sequence decodes its next token, one query token a sequence, through layers 0..
    layers-1, from empty caches; returns {name: F32 bytes} as atom-run --output writes them.
    `buffers` makes the buffers (HostBuffers, or torch tensors on a device); with `reduce` (a
    tensor-parallel rank: options hold tp) a layer's output is recorded as reduce(out), the sum
    over the group of the ranks' partial outputs."""
    pipes = [atom.load_layer(checkpoint, l, max_tokens=len(inputs), **options)
             for l in range(layers)]
    p = pipes[0]
    h, bs = p.hidden, p.block_size
    lens = [len(x) // (2 * h) for x in inputs]  # inputs hold bf16 bytes
    first, blocks = [], 0
    for n in lens:
        first.append(blocks)
        blocks += (n + bs - 1) // bs
    max_blocks = max((n + bs - 1) // bs for n in lens)

    def cache():
        if p.cache_kind == "mla_latent":
            return buffers.zeros("bf16", blocks * bs * p.cache_row)
        row = blocks * bs * p.kv_heads
        return (buffers.zeros("fp8", row * p.head_dim), buffers.zeros("fp8", row * p.head_dim),
                buffers.zeros("float", row), buffers.zeros("float", row))

    caches = [cache() for _ in pipes]
    outputs = {f"hidden.{s}.layer.{l}": [b""] * lens[s] for s in range(len(lens))
               for l in range(layers)}
    for step in range(max(lens)):
        running = [s for s in range(len(lens)) if step < lens[s]]
        t = len(running)
        table = [0] * (t * max_blocks)
        slots = []
        residual = b""
        for i, s in enumerate(running):
            for b in range((lens[s] + bs - 1) // bs):
                table[i * max_blocks + b] = first[s] + b
            slots.append((first[s] + step // bs) * bs + step % bs)
            residual += inputs[s][step * h * 2:(step + 1) * h * 2]
        residual = buffers.of_bytes("bf16", residual)
        batch = (buffers.of("int32", table), buffers.of("int32", [step + 1] * t),
                 buffers.of("int64", [step] * t), buffers.of("int64", slots))
        x, out = buffers.zeros("bf16", t * h), buffers.zeros("bf16", t * h)
        for l, pipe in enumerate(pipes):
            pipe(x, residual, caches[l], *batch, out=out)
            got = array.array("H", buffers.to_bytes(out))
            if reduce is not None:
                got = reduce(got)
            res = array.array("H", buffers.to_bytes(residual))
            for i, s in enumerate(running):
                outputs[f"hidden.{s}.layer.{l}"][step] = b"".join(
                    struct.pack("<f", bf16_to_float(got[i * h + c]) + bf16_to_float(res[i * h + c]))
                    for c in range(h))
            x, out = out, x
    return {k: b"".join(v) for k, v in outputs.items()}


def atom_run_decode(model, fmt, layers, backend, tp=1):
    """What `atom-run --checkpoint [--tp N]` writes for the model's input sequences, and the
    inputs."""
    checkpoint = os.path.join(HF, model, fmt)
    source = read_safetensors(os.path.join(HF, model, "input.safetensors"))
    names = sorted(source, key=lambda k: int(k.split(".")[1]))
    with tempfile.TemporaryDirectory() as tmp:
        written = os.path.join(tmp, "out.safetensors")
        subprocess.run([os.environ["ATOM_RUN"], "--checkpoint", checkpoint, "--layers",
                        str(layers), "--input", os.path.join(HF, model, "input.safetensors"),
                        "--output", written, "--backend", backend, "--tp", str(tp)], check=True,
                       capture_output=True)
        return read_safetensors(written), [source[k][2] for k in names]


class Layout(unittest.TestCase):
    def test_ctypes_mirrors_match_the_header(self):
        layout = json.loads(subprocess.run([os.environ["ATOM_ABI_LAYOUT"]], check=True,
                                           capture_output=True, text=True).stdout)
        self.assertEqual(set(layout), set(_abi.STRUCTS))
        for name, mirror in _abi.STRUCTS.items():
            with self.subTest(struct=name):
                self.assertEqual(ctypes.sizeof(mirror), layout[name]["size"])
                fields = [f[0] for f in mirror._fields_]
                self.assertEqual(fields, list(layout[name]["fields"]))
                for f in fields:
                    self.assertEqual(getattr(mirror, f).offset, layout[name]["fields"][f], f)


class Register(unittest.TestCase):
    def test_both_variables(self):
        full = atom.register({})
        self.assertEqual([a.architecture for a in full.architectures],
                         ["DeepseekV3ForCausalLM", "Qwen3MoeForCausalLM"])
        self.assertEqual([b.name for b in full.attention_backends], ["mla", "paged_gqa"])
        self.assertEqual(full.architectures[0].layer_pipeline, "ds_layer")
        no_attention = atom.register({"ATOM_DISABLE_VLLM_PLUGIN_ATTENTION": "1"})
        self.assertEqual(no_attention.attention_backends, [])
        self.assertIsNone(no_attention.architectures[1].attention_pipeline)
        self.assertEqual(no_attention.architectures[1].moe_pipeline, "moe_block")
        nothing = atom.register({"ATOM_DISABLE_VLLM_PLUGIN": "1"})
        self.assertEqual((nothing.architectures, nothing.attention_backends), ([], []))
        with self.assertRaises(atom.PluginError) as e:
            atom.load_layer(os.path.join(HF, "qwen3-30b-a3b-tiny", "bf16"), 1,
                            settings={"ATOM_DISABLE_VLLM_PLUGIN": "1"})
        self.assertEqual(e.exception.status_name, "NOT_REGISTERED")
        self.assertIn("ATOM_DISABLE_VLLM_PLUGIN", str(e.exception))

    def test_environment_and_bad_values(self):
        os.environ["ATOM_DISABLE_VLLM_PLUGIN"] = "1"
        try:
            self.assertEqual(atom.register().architectures, [])
        finally:
            del os.environ["ATOM_DISABLE_VLLM_PLUGIN"]
        with self.assertRaises(atom.PluginError) as e:
            atom.register({"ATOM_DISABLE_VLLM_PLUGIN": "maybe"})
        self.assertEqual(e.exception.status_name, "CONFIG")
        self.assertIn("ATOM_DISABLE_VLLM_PLUGIN", str(e.exception))


class Decode(unittest.TestCase):
    def check(self, model, fmt):
        want, inputs = atom_run_decode(model, fmt, 3, "host")
        got = decode_through_binding(os.path.join(HF, model, fmt), inputs, 3, backend="host")
        for name, data in got.items():
            self.assertEqual(want[name][0], "F32", name)
            self.assertTrue(data == want[name][2], f"{name} differs from atom-run's")

    def test_qwen3_moe_checkpoints(self):
        for fmt in ("bf16", "fp8", "mxfp4"):
            with self.subTest(format=fmt):
                self.check("qwen3-30b-a3b-tiny", fmt)

    def test_deepseek_v3_checkpoints(self):
        for fmt in ("bf16", "fp8", "mxfp4"):
            with self.subTest(format=fmt):
                self.check("deepseek-v3-tiny", fmt)


class Group:
    """An engine's tensor-parallel group for the tests: ranks are threads; a sum is taken in float
    in rank order and rounded to bf16 once (atom's own HostTpGroup's arithmetic, which atom-run
    --tp uses), through buffers given by address (all_reduce) or as arrays (reduce)."""

    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size)
        self.inputs = [None] * size

    def _sum(self, rank, values):
        self.inputs[rank] = values
        self.barrier.wait()
        total = array.array("H", bytes(2 * len(values)))
        for i in range(len(values)):
            acc = 0.0
            for peer in self.inputs:
                acc = struct.unpack("<f", struct.pack("<f", acc + bf16_to_float(peer[i])))[0]
            total[i] = float_to_bf16(acc)
        self.barrier.wait()  # every rank has read every input before any writes
        return total

    def all_reduce(self, rank):
        def reduce(x, out, count, stream):
            values = array.array("H", ctypes.string_at(x, 2 * count))
            ctypes.memmove(out, self._sum(rank, values).tobytes(), 2 * count)
        return reduce

    def reduce(self, rank):
        return lambda values: self._sum(rank, values)


def float_to_bf16(v):
    """Round to nearest even, as atom's to_bf16 (finite values)."""
    bits = struct.unpack("<I", struct.pack("<f", v))[0]
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


class TensorParallel(unittest.TestCase):
    def test_ranks_through_an_engine_group_equal_atom_run_tp(self):
        """Two ranks, each a thread loading its share with tp=(rank, 2, all_reduce), decode the
        checkpoint's sequences; their recorded outputs equal `atom-run --tp 2` bit for bit."""
        for model, fmt in (("qwen3-30b-a3b-tiny", "bf16"), ("deepseek-v3-tiny", "mxfp4")):
            with self.subTest(model=model, format=fmt):
                checkpoint = os.path.join(HF, model, fmt)
                want, inputs = atom_run_decode(model, fmt, 3, "host", tp=2)
                group = Group(2)
                got = [None, None]
                failed = []

                def rank(r):
                    try:
                        got[r] = decode_through_binding(
                            checkpoint, inputs, 3, backend="host", reduce=group.reduce(r),
                            tp=(r, 2, group.all_reduce(r)))
                    except BaseException as e:  # reported below; release the other rank
                        failed.append(e)
                        group.barrier.abort()

                threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                self.assertEqual(failed, [])
                self.assertEqual(got[0], got[1])
                self.assertEqual(set(got[0]), {k for k in want if k.startswith("hidden.")})
                for name, data in got[0].items():
                    self.assertTrue(data == want[name][2], f"{name} differs from atom-run's")

    def test_a_failing_reduction_raises(self):
        def broken(x, out, count, stream):
            raise RuntimeError("the engine's group is gone")

        layer = atom.load_layer(os.path.join(HF, "qwen3-30b-a3b-tiny", "bf16"), 1, max_tokens=1,
                                backend="host", tp=(0, 2, broken))
        h, bs = layer.hidden, layer.block_size
        row = bs * layer.kv_heads
        cache = ((ctypes.c_uint8 * (row * layer.head_dim))(),
                 (ctypes.c_uint8 * (row * layer.head_dim))(), (ctypes.c_float * row)(),
                 (ctypes.c_float * row)())
        with self.assertRaises(atom.PluginError) as e:
            layer(array.array("H", [0x3f80] * h), array.array("H", [0x3f00] * h), cache,
                  array.array("i", [0]), array.array("i", [1]), array.array("q", [0]),
                  array.array("q", [0]), out=array.array("H", [0] * h))
        self.assertEqual(e.exception.status_name, "COMMUNICATOR")
        self.assertIn("all_reduce_bf16 returned 1 on rank 0 of 2", str(e.exception))


class BadInput(unittest.TestCase):
    def setUp(self):
        self.layer = atom.load_layer(os.path.join(HF, "qwen3-30b-a3b-tiny", "bf16"), 1,
                                     max_tokens=2, backend="host")
        L = self.layer
        self.assertEqual((L.architecture, L.kind, L.backend, L.cache_kind),
                         ("Qwen3MoeForCausalLM", "layer", "host", "fp8_kv"))
        self.assertEqual(L.workspace[0], 2)
        h, bs = L.hidden, L.block_size
        row = 2 * bs * L.kv_heads
        self.cache = ((ctypes.c_uint8 * (row * L.head_dim))(),
                      (ctypes.c_uint8 * (row * L.head_dim))(), (ctypes.c_float * row)(),
                      (ctypes.c_float * row)())
        self.x = array.array("H", [0x3f80] * (2 * h))
        self.residual = array.array("H", [0x3f00] * (2 * h))
        self.out = array.array("H", [0x7fc1] * (2 * h))
        self.batch = dict(block_table=array.array("i", [0, 1]),
                          context_lens=array.array("i", [1, 1]),
                          positions=array.array("q", [0, 0]),
                          slots=array.array("q", [0, bs]))

    def run_layer(self, **changes):
        a = dict(x=self.x, residual=self.residual, cache=self.cache, **self.batch)
        out = changes.pop("out", self.out)
        a.update(changes)
        return self.layer(a.pop("x"), a.pop("residual"), a.pop("cache"), out=out, **a)

    def assert_untouched(self):
        self.assertEqual(set(self.out), {0x7fc1})
        self.assertEqual(set(self.residual), {0x3f00})
        self.assertEqual(set(bytes(self.cache[0])), {0})

    def refused(self, error, says, **changes):
        with self.assertRaises(error) as e:
            self.run_layer(**changes)
        self.assertIn(says, str(e.exception))
        self.assert_untouched()

    def test_runs(self):
        self.run_layer()
        self.assertNotIn(0x7fc1, set(self.out))

    def test_wrong_dtype(self):
        self.refused(ValueError, "x holds items of format 'f'", x=array.array("f", [0.0] * 512))
        self.refused(ValueError, "context_lens holds items",
                     context_lens=array.array("q", [1, 1]))
        self.refused(ValueError, "cache must be the tuple", cache=self.cache[0])

    def test_layout_and_writability(self):
        strided = memoryview(array.array("H", [0] * (4 * self.layer.hidden)))[::2]
        self.refused(ValueError, "out is not contiguous", out=strided)
        self.refused(ValueError, "residual is read-only", residual=memoryview(self.residual).toreadonly())
        self.refused(ValueError, "slots is a str", slots="0")

    def test_plugin_checks(self):
        self.refused(atom.PluginError, "args.slots[1]", slots=array.array("q", [0, 0]))
        self.refused(atom.PluginError, "outside the cache's",
                     block_table=array.array("i", [0, 7]))
        self.refused(atom.PluginError, "'query_start' must start at 0",
                     query_start=array.array("i", [1, 2, 2]))
        one_block = tuple((c._type_ * (len(c) // 2))() for c in self.cache)
        self.refused(atom.PluginError, "outside the cache's 1 blocks", cache=one_block)
        self.refused(ValueError, "positions is None", positions=None)
        big = dict(x=array.array("H", [0] * (3 * self.layer.hidden)))
        with self.assertRaises(atom.PluginError) as e:
            self.run_layer(**big, out=array.array("H", [0] * (3 * self.layer.hidden)))
        self.assertIn("max_tokens 2", str(e.exception))


if __name__ == "__main__":
    unittest.main()
