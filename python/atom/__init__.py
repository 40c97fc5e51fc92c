"""atom's decode pipelines for host engines: DeepSeek-V3 and Qwen3-MoE decoder layers of a
Hugging Face checkpoint, run on the engine's own buffers through libatom_plugin.so (its C ABI,
version 4, over ctypes: nothing to compile).

    import atom
    print(atom.register().architectures)
    layer = atom.load_layer("/models/Qwen3-30B-A3B", 1, kv_cache="bf16")
    out = layer(x, residual, (key, value), block_table, context_lens, positions, slots,
                query_start)

A Qwen3 layer reads the KV cache format it was loaded for (kv_cache=): "fp8_row" (the default,
atom's FP8 with a float scale per token and KV head: the cache is (key, value, key_scale,
value_scale)), "fp8_tensor" (FP8 with one scale per tensor, vLLM's and SGLang's: (key, value,
k_scale, v_scale), the scales float32 of one element each) or "bf16" ((key, value), or the engine's
[2, num_blocks, block_size, kv_heads, head_dim] tensor). key and value are [num_blocks, block_size,
kv_heads, head_dim] each. DeepSeek-V3's cache is its MLA latent cache whatever kv_cache says.

Buffers are torch tensors (read by data_ptr(), contiguous, on the device the pipeline runs on)
or, for the host backend, any contiguous Python buffer (array.array, bytearray, numpy arrays;
bf16 values as their 16 bits). Shape, dtype and device errors raise ValueError naming the
argument; the plugin's own checks raise PluginError with its message. Nothing is written when
either is raised.
"""
import ctypes
import os
from collections import namedtuple

from . import _abi
from ._abi import PluginError

__version__ = "0.3.0"  # ABI version 4
__all__ = ["register", "load_layer", "Layer", "Registration", "PluginError", "KV_CACHE_FORMATS"]

# The GQA cache formats a Qwen3 layer may be loaded for (Layer's kv_cache).
KV_CACHE_FORMATS = tuple(_abi.KV_CACHE_KINDS)

Architecture = namedtuple(
    "Architecture", "architecture layer_pipeline attention_pipeline moe_pipeline "
                    "attention_backend presets")
AttentionBackend = namedtuple("AttentionBackend", "name pipeline cache_layout")


def _text(b):
    return None if b is None else b.decode()


class _Settings:
    """A NULL-terminated name/value list of ATOM_* settings; None reads the environment."""

    def __init__(self, settings):
        self.array = None
        if settings is not None:
            items = []
            for name, value in settings.items():
                items += [str(name).encode(), str(value).encode()]
            self.array = (ctypes.c_char_p * (len(items) + 1))(*items, None)


class Registration:
    """What the plugin registers under ATOM_DISABLE_VLLM_PLUGIN and
    ATOM_DISABLE_VLLM_PLUGIN_ATTENTION: the architectures served with their pipelines, and the
    attention backends (empty when the variables disable them)."""

    def __init__(self, settings=None):
        api = _abi.api()
        s = _Settings(settings)
        self._handle = ctypes.c_void_p()
        _abi.check(api.register_plugin(s.array, ctypes.byref(self._handle)))
        info = _abi.RegistrationInfo()
        _abi.check(api.registration_info(self._handle, ctypes.byref(info)))
        self.plugin_enabled = bool(info.plugin_enabled)
        self.attention_enabled = bool(info.attention_enabled)
        self.warnings = _text(info.warnings)
        self.architectures = []
        for i in range(info.model_count):
            m = _abi.Model()
            _abi.check(api.model(self._handle, i, ctypes.byref(m)))
            self.architectures.append(Architecture(
                _text(m.architecture), _text(m.layer_pipeline), _text(m.attention_pipeline),
                _text(m.moe_pipeline), _text(m.attention_backend),
                [m.presets[j].decode() for j in range(m.preset_count)]))
        self.attention_backends = []
        for i in range(info.attention_backend_count):
            b = _abi.AttentionBackend()
            _abi.check(api.attention_backend(self._handle, i, ctypes.byref(b)))
            self.attention_backends.append(
                AttentionBackend(_text(b.name), _text(b.pipeline), _text(b.cache_layout)))

    def __del__(self):
        if getattr(self, "_handle", None) and _abi._api is not None:
            _abi.api().release_registration(self._handle)

    def __repr__(self):
        return (f"Registration(architectures={[a.architecture for a in self.architectures]}, "
                f"attention_backends={[b.name for b in self.attention_backends]})")


def register(settings=None):
    """The plugin's registration: from the process environment, or from `settings`, a dict of
    ATOM_* names to values read instead of it (names not given take their defaults)."""
    return Registration(settings)


# The element types the ABI takes: torch dtype names, and for Python buffers the item size and
# whether the struct format is an integer one (bf16 and fp8 travel as their bits).
_TYPES = {
    "bf16": (("torch.bfloat16",), 2, "int", ctypes.c_uint16),
    "int32": (("torch.int32",), 4, "int", ctypes.c_int32),
    "int64": (("torch.int64",), 8, "int", ctypes.c_int64),
    "fp8": (("torch.float8_e4m3fn", "torch.uint8"), 1, "int", ctypes.c_uint8),
    "float": (("torch.float32",), 4, "float", ctypes.c_float),
}
_INT_FORMATS = set("bBhHiIlLqQnN")


class _Arg:
    """One buffer argument: its address and element count, checked for dtype, layout, device
    and writability; what it keeps alive (a read-only buffer's copy) lives as long as it."""

    def __init__(self, name, obj, kind, writable, on_gpu):
        torch_names, itemsize, family, ctype = _TYPES[kind]
        self.ctype = ctype
        if hasattr(obj, "data_ptr") and hasattr(obj, "dtype"):
            if str(obj.dtype) not in torch_names:
                raise ValueError(f"{name} has dtype {obj.dtype}, expected {' or '.join(torch_names)}")
            if not obj.is_contiguous():
                raise ValueError(f"{name} is not contiguous")
            device = getattr(obj.device, "type", str(obj.device))
            if on_gpu and device != "cuda":
                raise ValueError(f"{name} is on {obj.device}; the pipeline runs on the GPU")
            if not on_gpu and device != "cpu":
                raise ValueError(f"{name} is on {obj.device}; the pipeline runs on the host "
                                 "backend and reads host memory")
            self.address, self.count = obj.data_ptr(), obj.numel()
            self._keep = obj
            return
        if on_gpu:
            raise ValueError(f"{name} is a {type(obj).__name__}; the GPU pipeline takes torch "
                             "tensors on the GPU")
        try:
            view = memoryview(obj)
        except TypeError:
            raise ValueError(f"{name} is a {type(obj).__name__}, not a tensor or a buffer") from None
        fmt = view.format.lstrip("@=<>!")
        is_int = fmt in _INT_FORMATS
        if view.itemsize != itemsize or is_int != (family == "int") or (
                family == "float" and fmt != "f"):
            raise ValueError(f"{name} holds items of format '{view.format}' ({view.itemsize} "
                             f"bytes), expected {kind} ({itemsize}-byte "
                             f"{'integers' if family == 'int' else 'floats'})")
        if not view.c_contiguous:
            raise ValueError(f"{name} is not contiguous")
        if writable and view.readonly:
            raise ValueError(f"{name} is read-only, but the pipeline writes it")
        self.count = view.nbytes // itemsize
        if view.nbytes == 0:
            self.address, self._keep = 0, view
        elif view.readonly:
            self._keep = (ctypes.c_char * view.nbytes).from_buffer_copy(view.cast("B"))
            self.address = ctypes.addressof(self._keep)
        else:
            self._keep = (ctypes.c_char * view.nbytes).from_buffer(view.cast("B"))
            self.address = ctypes.addressof(self._keep)

    def pointer(self):
        return ctypes.cast(ctypes.c_void_p(self.address or None), ctypes.POINTER(self.ctype))


def _stream_handle(stream):
    if stream is None:
        return None
    if hasattr(stream, "cuda_stream"):  # torch.cuda.Stream
        return ctypes.c_void_p(stream.cuda_stream)
    return ctypes.c_void_p(int(stream))


class Layer:
    """Decoder layer `layer` of a checkpoint folder as a pipeline of `kind`: "layer" (the
    attention and the layer's MLP, MoE or dense), "attention" or "moe". The workspace is sized at
    load for `max_tokens` tokens a call.

    `kv_cache` is the format of the GQA key/value cache the layer reads and writes: "fp8_row"
    (atom's own, the default), "fp8_tensor" or "bf16" (KV_CACHE_FORMATS; the header's "KV
    caches"). A model whose cache is not GQA's (DeepSeek-V3's MLA latent cache) and the moe kind
    ignore it; `self.kv_cache` is then None.

    `tp=(rank, size, all_reduce)` loads that rank's share of the layer for a tensor-parallel group
    the engine holds (the header's "Tensor parallelism"): `all_reduce(x, out, count, stream)`
    gets the addresses of `count` bf16 values and must write the group's sum of x to out (out may
    be x) on every rank; raising fails the call with PluginError COMMUNICATOR."""

    def __init__(self, checkpoint, layer, kind="layer", *, max_tokens=256, backend="auto",
                 kv_cache="fp8_row", settings=None, registration=None, tp=None):
        if kv_cache not in _abi.KV_CACHE_KINDS:
            raise ValueError(f"kv_cache is {kv_cache!r}, expected one of "
                             f"{', '.join(map(repr, KV_CACHE_FORMATS))}")
        api = _abi.api()
        reg = registration if registration is not None else Registration(settings)
        options = _abi.LoadOptions(str(backend).encode(), int(max_tokens),
                                   _abi.KV_CACHE_KINDS[kv_cache])
        self._handle = ctypes.c_void_p()
        args = (reg._handle, os.fspath(checkpoint).encode(), int(layer), str(kind).encode(),
                ctypes.byref(options))
        if tp is None:
            _abi.check(api.load_pipeline(*args, ctypes.byref(self._handle)))
        else:
            rank, size, all_reduce = tp

            def reduce(_, x, out, count, stream):
                try:
                    all_reduce(ctypes.cast(x, ctypes.c_void_p).value or 0,
                               ctypes.cast(out, ctypes.c_void_p).value or 0, int(count),
                               stream or 0)
                    return 0
                except BaseException:  # the plugin reports it; nothing may unwind through C
                    return 1

            # The callback and the struct live as long as the layer (the plugin keeps a copy of
            # the struct, which points at the callback).
            self._reduce = _abi.ALL_REDUCE_BF16(reduce)
            self._communicator = _abi.Communicator(int(rank), int(size), None, self._reduce)
            _abi.check(api.load_pipeline_tp(*args, ctypes.byref(self._communicator),
                                            ctypes.byref(self._handle)))
        info = _abi.PipelineInfo()
        _abi.check(api.pipeline_info(self._handle, ctypes.byref(info)))
        self.architecture = _text(info.architecture)
        self.kind = _text(info.kind)
        self.pipeline = _text(info.pipeline)
        self.instance = _text(info.instance)
        self.backend = _text(info.backend)
        self.hidden = info.hidden
        self.block_size = info.block_size
        self.max_position = info.max_position
        # The ABI's cache kind by its name (ATOM_PLUGIN_CACHE_*, lower case), and for a GQA cache
        # its format by the name it was loaded with.
        self.cache_kind = {_abi.CACHE_NONE: None, _abi.CACHE_MLA_LATENT: "mla_latent",
                           _abi.CACHE_FP8_KV: "fp8_kv", _abi.CACHE_KV_FP8_TENSOR: "kv_fp8_tensor",
                           _abi.CACHE_KV_BF16: "kv_bf16"}[info.cache_kind]
        self.kv_cache = {k: name for name, k in _abi.KV_CACHE_KINDS.items()}.get(info.cache_kind)
        self.cache_row = info.cache_row
        self.kv_heads = info.cache_kv_heads
        self.head_dim = info.cache_head_dim

    def __del__(self):
        if getattr(self, "_handle", None) and _abi._api is not None:
            _abi.api().destroy_pipeline(self._handle)

    @property
    def workspace(self):
        """(max_tokens, bytes): the most tokens a call takes and the scratch memory held."""
        tokens, size = ctypes.c_int64(), ctypes.c_size_t()
        _abi.check(_abi.api().workspace(self._handle, ctypes.byref(tokens), ctypes.byref(size)))
        return tokens.value, size.value

    def __repr__(self):
        return f"Layer({self.architecture}, {self.kind}, instance={self.instance!r})"

    def __call__(self, x, residual, cache=None, block_table=None, context_lens=None,
                 positions=None, slots=None, query_start=None, *, out=None, stream=None):
        """Runs the pipeline once on a per-sequence decode batch (atom_plugin.h states it):
        x, residual, out [tokens, hidden] bf16 (residual updated in place to x + residual);
        cache: the MLA latent cache [num_blocks, block_size, kv_lora + rope] bf16, or the GQA
        cache of the layer's kv_cache format, key and value [num_blocks, block_size, kv_heads,
        head_dim] each: "fp8_row" (key, value, key_scale, value_scale), FP8 codes
        (torch.float8_e4m3fn or uint8) and float32 scales [num_blocks, block_size, kv_heads];
        "fp8_tensor" (key, value, k_scale, v_scale), FP8 codes and float32 scales of one element
        each (read, never written); "bf16" (key, value) or the engine's one [2, num_blocks,
        block_size, kv_heads, head_dim] tensor (vLLM's kv_cache); block_table [sequences,
        max_blocks] and context_lens [sequences] int32; positions and slots [tokens] int64 (slot
        -1: a padded token); query_start [sequences + 1] int32 (None: one token a sequence).
        `stream`: a torch.cuda.Stream or a cudaStream_t as an integer; on the GPU backend None means
        torch's current stream, so that a call inside torch.cuda.graph() is captured. Returns
        out (a new buffer like x when not given)."""
        on_gpu = self.backend == "gpu"
        xa = _Arg("x", x, "bf16", False, on_gpu)
        if xa.count % self.hidden != 0:
            raise ValueError(f"x holds {xa.count} values, not a multiple of hidden "
                             f"({self.hidden})")
        tokens = xa.count // self.hidden
        if out is None:
            out = _like(x, xa.count)
        a = _abi.SequenceArgs()
        args = {"x": xa, "residual": _Arg("residual", residual, "bf16", True, on_gpu),
                "out": _Arg("out", out, "bf16", True, on_gpu)}
        sequences = max_blocks = num_blocks = 0
        if self.cache_kind is not None:
            for name, value in (("block_table", block_table), ("context_lens", context_lens),
                                ("positions", positions), ("slots", slots), ("cache", cache)):
                if value is None:
                    raise ValueError(f"{name} is None; the {self.kind} pipeline reads it")
            lens = _Arg("context_lens", context_lens, "int32", False, on_gpu)
            sequences = lens.count
            if sequences == 0:
                raise ValueError("context_lens is empty; a batch has at least one sequence")
            if query_start is None and on_gpu:
                import torch
                query_start = torch.arange(sequences + 1, dtype=torch.int32,
                                           device=context_lens.device)
            elif query_start is None:
                query_start = (ctypes.c_int32 * (sequences + 1))(*range(sequences + 1))
            table = _Arg("block_table", block_table, "int32", False, on_gpu)
            if table.count % sequences != 0:
                raise ValueError(f"block_table holds {table.count} entries, not a multiple of "
                                 f"the {sequences} sequences of context_lens")
            max_blocks = table.count // sequences
            args.update(query_start=_Arg("query_start", query_start, "int32", False, on_gpu),
                        context_lens=lens, block_table=table,
                        positions=_Arg("positions", positions, "int64", False, on_gpu),
                        slots=_Arg("slots", slots, "int64", False, on_gpu))
            row = self.block_size * (self.cache_row if self.cache_kind == "mla_latent"
                                     else self.kv_heads * self.head_dim)
            if self.cache_kind == "mla_latent":
                args["mla_cache"] = _Arg("cache", cache, "bf16", True, on_gpu)
                cache_count = args["mla_cache"].count
            else:
                args.update(self._kv_args(cache, on_gpu))
                cache_count = args["key_cache"].count
            if cache_count % row != 0:
                raise ValueError(f"cache holds {cache_count} values, not a multiple of a block's "
                                 f"{row}")
            num_blocks = cache_count // row
        a.shape = _abi.SequenceShape(tokens, sequences, max_blocks, num_blocks)
        for name, arg in args.items():
            setattr(a, name, (arg.address or None) if name in _VOID_FIELDS else arg.pointer())
            setattr(a, name + "_count", arg.count)
        if stream is None and on_gpu:
            import torch  # a GPU pipeline runs on torch tensors: torch's current stream
            stream = torch.cuda.current_stream()
        _abi.check(_abi.api().run_sequences(self._handle, ctypes.byref(a),
                                            _stream_handle(stream)))
        return out

    def _kv_args(self, cache, on_gpu):
        """The run's key/value cache buffers from `cache` in the layer's format (__call__)."""
        fmt = self.kv_cache
        if fmt == "bf16":
            if hasattr(cache, "data_ptr") and hasattr(cache, "dim"):
                if cache.dim() < 1 or cache.shape[0] != 2:
                    raise ValueError(f"cache has shape {tuple(cache.shape)}; the bf16 cache is "
                                     "(key, value) or one [2, num_blocks, block_size, kv_heads, "
                                     "head_dim] tensor")
                cache = (cache[0], cache[1])
            if not isinstance(cache, (tuple, list)) or len(cache) != 2:
                raise ValueError("cache must be (key, value) or one [2, num_blocks, block_size, "
                                 "kv_heads, head_dim] tensor for the bf16 cache")
            parts = (("key_cache", "bf16"), ("value_cache", "bf16"))
        else:
            scale = "key_scale, value_scale" if fmt == "fp8_row" else "k_scale, v_scale"
            if not isinstance(cache, (tuple, list)) or len(cache) != 4:
                raise ValueError(f"cache must be the tuple (key, value, {scale}) of the {fmt} "
                                 "cache")
            parts = (("key_cache", "fp8"), ("value_cache", "fp8"), ("key_scale", "float"),
                     ("value_scale", "float"))
        # fp8_tensor's scales are only read: a read-only buffer is fine (the plugin still wants
        # them apart from the cache's other buffers).
        args = {name: _Arg(f"cache[{i}] ({name})", cache[i], kind,
                           not (fmt == "fp8_tensor" and kind == "float"), on_gpu)
                for i, (name, kind) in enumerate(parts)}
        if fmt == "fp8_tensor":
            for name in ("key_scale", "value_scale"):
                if args[name].count != 1:
                    raise ValueError(f"cache[{2 if name == 'key_scale' else 3}] ({name}) holds "
                                     f"{args[name].count} floats; the fp8_tensor cache has one "
                                     "scale per tensor")
        return args


# The run args' fields that are void* (set by address).
_VOID_FIELDS = {"key_cache", "value_cache"}


def _like(x, count):
    if hasattr(x, "data_ptr"):
        import torch  # only when the caller passes torch tensors
        return torch.empty_like(x)
    return (ctypes.c_uint16 * count)()


def load_layer(checkpoint, layer, kind="layer", **options):
    """Layer(checkpoint, layer, kind, max_tokens=256, backend="auto", kv_cache="fp8_row",
    settings=None, tp=None)."""
    return Layer(checkpoint, layer, kind, **options)
