"""The Python binding (python/atom) on the host backend, through libatom_plugin.so:
the ctypes mirrors against the C header's layout, registration under both variables, a
checkpoint's decoder layers decoded through the binding equal to `atom-run --checkpoint` bit for
bit (atom-run's decode is the one tests/model checks against transformers), on each KV cache
format (`--kv-cache`), and bad input raising an error that names the argument with nothing
written.

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

    def full(self, kind, n, value):
        return array.array(self.codes[kind], [value] * n)

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
    over the group of the ranks' partial outputs. options may hold kv_cache: an fp8_tensor cache
    gets the scales 1 (atom-run's for a checkpoint, which calibrates none)."""
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
        if p.kv_cache == "bf16":
            return (buffers.zeros("bf16", row * p.head_dim), buffers.zeros("bf16", row * p.head_dim))
        scales = 1 if p.kv_cache == "fp8_tensor" else row
        return (buffers.zeros("fp8", row * p.head_dim), buffers.zeros("fp8", row * p.head_dim),
                buffers.full("float", scales, 1.0), buffers.full("float", scales, 1.0))

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


def atom_run_decode(model, fmt, layers, backend, tp=1, kv_cache="fp8_row"):
    """What `atom-run --checkpoint [--tp N] [--kv-cache F]` writes for the model's input
    sequences, and the inputs."""
    checkpoint = os.path.join(HF, model, fmt)
    source = read_safetensors(os.path.join(HF, model, "input.safetensors"))
    names = sorted(source, key=lambda k: int(k.split(".")[1]))
    with tempfile.TemporaryDirectory() as tmp:
        written = os.path.join(tmp, "out.safetensors")
        subprocess.run([os.environ["ATOM_RUN"], "--checkpoint", checkpoint, "--layers",
                        str(layers), "--input", os.path.join(HF, model, "input.safetensors"),
                        "--output", written, "--backend", backend, "--tp", str(tp),
                        "--kv-cache", kv_cache], check=True, capture_output=True)
        return read_safetensors(written), [source[k][2] for k in names]


class Layout(unittest.TestCase):
    def test_ctypes_mirrors_match_the_header(self):
        layout = json.loads(subprocess.run([os.environ["ATOM_ABI_LAYOUT"]], check=True,
                                           capture_output=True, text=True).stdout)
        constants = layout.pop("constants")
        self.assertEqual(constants, {
            "ATOM_PLUGIN_ABI_VERSION": _abi.ABI_VERSION, "ATOM_PLUGIN_CACHE_NONE": _abi.CACHE_NONE,
            "ATOM_PLUGIN_CACHE_MLA_LATENT": _abi.CACHE_MLA_LATENT,
            "ATOM_PLUGIN_CACHE_FP8_KV": _abi.CACHE_FP8_KV,
            "ATOM_PLUGIN_CACHE_KV_FP8_TENSOR": _abi.CACHE_KV_FP8_TENSOR,
            "ATOM_PLUGIN_CACHE_KV_BF16": _abi.CACHE_KV_BF16})
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
        for fmt in atom.KV_CACHE_FORMATS:  # the GQA backend's cache formats, chosen at load
            self.assertIn(fmt, full.attention_backends[1].cache_layout)
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


def check_decode(test, model, fmt, kv_cache="fp8_row"):
    """The checkpoint's first three layers through the binding equal atom-run's, bit for bit."""
    want, inputs = atom_run_decode(model, fmt, 3, "host", kv_cache=kv_cache)
    got = decode_through_binding(os.path.join(HF, model, fmt), inputs, 3, backend="host",
                                 kv_cache=kv_cache)
    for name, data in got.items():
        test.assertEqual(want[name][0], "F32", name)
        test.assertTrue(data == want[name][2], f"{name} differs from atom-run's")


class Decode(unittest.TestCase):
    def check(self, model, fmt):
        check_decode(self, model, fmt)

    def test_qwen3_moe_checkpoints(self):
        for fmt in ("bf16", "fp8", "mxfp4"):
            with self.subTest(format=fmt):
                self.check("qwen3-30b-a3b-tiny", fmt)

    def test_deepseek_v3_checkpoints(self):
        for fmt in ("bf16", "fp8", "mxfp4"):
            with self.subTest(format=fmt):
                self.check("deepseek-v3-tiny", fmt)


class KvCacheFormats(unittest.TestCase):
    """kv_cache="fp8_row" | "fp8_tensor" | "bf16" (ABI 4): decodes equal to atom-run's of the
    format, the layer's report of it, and bad caches of each format refused with nothing
    written."""

    def test_qwen3_moe_kv_cache_formats(self):
        """Each KV cache format through the binding equals atom-run --kv-cache of it; the formats
        differ from each other (the cache is read back: its rounding shows in the outputs)."""
        outputs = {}
        for kv in atom.KV_CACHE_FORMATS:
            for fmt in ("bf16", "mxfp4"):
                with self.subTest(kv_cache=kv, format=fmt):
                    check_decode(self, "qwen3-30b-a3b-tiny", fmt, kv)
            outputs[kv] = atom_run_decode("qwen3-30b-a3b-tiny", "bf16", 3, "host", kv_cache=kv)[0]
        name = "hidden.0.layer.2"
        self.assertNotEqual(outputs["bf16"][name][2], outputs["fp8_row"][name][2])
        self.assertNotEqual(outputs["fp8_tensor"][name][2], outputs["fp8_row"][name][2])

    def test_the_layer_says_its_format(self):
        qwen = os.path.join(HF, "qwen3-30b-a3b-tiny", "bf16")
        for kv, kind in (("fp8_row", "fp8_kv"), ("fp8_tensor", "kv_fp8_tensor"),
                         ("bf16", "kv_bf16")):
            layer = atom.load_layer(qwen, 1, max_tokens=1, backend="host", kv_cache=kv)
            self.assertEqual((layer.kv_cache, layer.cache_kind), (kv, kind))
            self.assertIn(f"kv-{kv.replace('_', '')}", layer.instance)
        moe = atom.load_layer(qwen, 1, "moe", max_tokens=1, backend="host", kv_cache="bf16")
        self.assertEqual((moe.kv_cache, moe.cache_kind), (None, None))
        mla = atom.load_layer(os.path.join(HF, "deepseek-v3-tiny", "bf16"), 1, max_tokens=1,
                              backend="host", kv_cache="bf16")
        self.assertEqual((mla.kv_cache, mla.cache_kind), (None, "mla_latent"))

    def layer(self, kv):
        return atom.load_layer(os.path.join(HF, "qwen3-30b-a3b-tiny", "bf16"), 1, max_tokens=2,
                               backend="host", kv_cache=kv)

    def batch(self, layer):
        h, bs = layer.hidden, layer.block_size
        return dict(x=array.array("H", [0x3f80] * (2 * h)),
                    residual=array.array("H", [0x3f00] * (2 * h)),
                    out=array.array("H", [0x7fc1] * (2 * h)),
                    block_table=array.array("i", [0, 1]), context_lens=array.array("i", [1, 1]),
                    positions=array.array("q", [0, 0]), slots=array.array("q", [0, bs]))

    def refused(self, layer, cache, error, says):
        b = self.batch(layer)
        with self.assertRaises(error) as e:
            layer(b.pop("x"), b.pop("residual"), cache, **b)
        self.assertIn(says, str(e.exception))
        self.assertEqual(set(b["out"]), {0x7fc1})
        for part in cache if isinstance(cache, tuple) else ():
            if isinstance(part, array.array) and part.typecode in "BH":
                self.assertEqual(set(part), {0}, "a cache was written")

    def test_fp8_tensor_cache(self):
        layer = self.layer("fp8_tensor")
        codes = 2 * layer.block_size * layer.kv_heads * layer.head_dim
        key, value = array.array("B", bytes(codes)), array.array("B", bytes(codes))
        k_scale, v_scale = array.array("f", [0.05]), array.array("f", [0.04])
        b = self.batch(layer)
        layer(b.pop("x"), b.pop("residual"), (key, value, k_scale, v_scale), **b)
        self.assertNotIn(0x7fc1, set(b["out"]))
        self.assertNotEqual(set(key), {0})
        self.assertEqual((k_scale[0], v_scale[0]), (array.array("f", [0.05])[0],
                                                     array.array("f", [0.04])[0]))
        # Read-only scales (the engine's constants) are accepted: the run only reads them.
        b = self.batch(layer)
        layer(b.pop("x"), b.pop("residual"),
              (key, value, memoryview(k_scale).toreadonly(), v_scale), **b)
        fresh = (array.array("B", bytes(codes)), array.array("B", bytes(codes)))
        self.refused(layer, fresh + (k_scale,), ValueError,
                     "cache must be the tuple (key, value, k_scale, v_scale)")
        self.refused(layer, fresh + (array.array("f", [0.05, 0.05]), v_scale), ValueError,
                     "cache[2] (key_scale) holds 2 floats; the fp8_tensor cache has one scale")
        self.refused(layer, fresh + (k_scale, array.array("d", [0.04])), ValueError,
                     "cache[3] (value_scale) holds items of format 'd'")
        self.refused(layer, fresh + (k_scale, array.array("f", [0.0])), atom.PluginError,
                     "args.value_scale[0] is 0")
        self.refused(layer, (array.array("H", [0] * codes),) + fresh[1:] + (k_scale, v_scale),
                     ValueError, "cache[0] (key_cache) holds items of format 'H'")

    def test_bf16_cache(self):
        layer = self.layer("bf16")
        n = 2 * layer.block_size * layer.kv_heads * layer.head_dim
        key, value = array.array("H", [0] * n), array.array("H", [0] * n)
        b = self.batch(layer)
        layer(b.pop("x"), b.pop("residual"), (key, value), **b)
        self.assertNotIn(0x7fc1, set(b["out"]))
        self.assertNotEqual(set(key), {0})
        fresh = (array.array("H", [0] * n), array.array("H", [0] * n))
        self.refused(layer, fresh + (array.array("f", [1.0]), array.array("f", [1.0])),
                     ValueError, "cache must be (key, value)")
        self.refused(layer, (array.array("B", bytes(n)), fresh[1]), ValueError,
                     "cache[0] (key_cache) holds items of format 'B'")
        self.refused(layer, (fresh[0], array.array("H", [0] * (n // 2))), atom.PluginError,
                     "args.value_cache holds")

    def test_unknown_format(self):
        with self.assertRaises(ValueError) as e:
            self.layer("fp16")
        self.assertIn("kv_cache is 'fp16', expected one of 'fp8_row', 'fp8_tensor', 'bf16'",
                      str(e.exception))


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
