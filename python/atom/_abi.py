"""The C ABI of libatom_plugin.so (include/atom/plugin/atom_plugin.h, version 4) in ctypes.

The header is the definition; these mirrors follow it field by field, and a test compares every
struct's size and field offsets with what a C compiler makes of the header.
"""
import ctypes
import os
from ctypes import (POINTER, Structure, c_char_p, c_float, c_int32, c_int64, c_size_t,
                    c_uint16, c_uint32, c_uint64, c_void_p)

ABI_VERSION = 4
ENTRY_POINT = "atom_plugin_get_api"

OK = 0
STATUS_NAMES = {
    1: "ABI_VERSION", 2: "NULL_POINTER", 3: "INVALID_ARGUMENT", 4: "BUFFER_TOO_SMALL",
    5: "UNKNOWN_ARCHITECTURE", 6: "UNKNOWN_NAME", 7: "CONFIG", 8: "NOT_REGISTERED",
    9: "NO_INSTANCE", 10: "OUT_OF_MEMORY", 11: "INTERNAL", 12: "CHECKPOINT",
    13: "COMMUNICATOR",
}

CACHE_NONE, CACHE_MLA_LATENT, CACHE_FP8_KV, CACHE_KV_FP8_TENSOR, CACHE_KV_BF16 = 0, 1, 2, 3, 4
# The GQA cache formats by the names atom uses (ops::kv_cache_format_name) and their kinds.
KV_CACHE_KINDS = {"fp8_row": CACHE_FP8_KV, "fp8_tensor": CACHE_KV_FP8_TENSOR,
                  "bf16": CACHE_KV_BF16}

status = c_int32


class RegistrationInfo(Structure):
    _fields_ = [("plugin_enabled", c_int32), ("attention_enabled", c_int32),
                ("model_count", c_size_t), ("attention_backend_count", c_size_t),
                ("warnings", c_char_p)]


class Model(Structure):
    _fields_ = [("architecture", c_char_p), ("layer_pipeline", c_char_p),
                ("attention_pipeline", c_char_p), ("moe_pipeline", c_char_p),
                ("attention_backend", c_char_p), ("presets", POINTER(c_char_p)),
                ("preset_count", c_size_t)]


class AttentionBackend(Structure):
    _fields_ = [("name", c_char_p), ("pipeline", c_char_p), ("cache_layout", c_char_p)]


class PipelineInfo(Structure):
    _fields_ = [("architecture", c_char_p), ("kind", c_char_p), ("preset", c_char_p),
                ("pipeline", c_char_p), ("instance", c_char_p), ("backend", c_char_p),
                ("hidden", c_int64), ("block_size", c_int64), ("max_position", c_int64),
                ("cache_kind", c_int32), ("cache_row", c_int64), ("cache_kv_heads", c_int64),
                ("cache_head_dim", c_int64)]


class BatchShape(Structure):
    _fields_ = [("tokens", c_int64), ("max_blocks_per_token", c_int64),
                ("num_blocks", c_int64)]


def _counted(*names_and_types):
    fields = []
    for name, ctype in names_and_types:
        fields += [(name, ctype), (name + "_count", c_size_t)]
    return fields


# key_cache and value_cache are void* (version 4): FP8 codes or bf16 by the cache kind.
_CACHES = [("mla_cache", POINTER(c_uint16)), ("key_cache", c_void_p),
           ("value_cache", c_void_p), ("key_scale", POINTER(c_float)),
           ("value_scale", POINTER(c_float))]
_ACTIVATIONS = [("x", POINTER(c_uint16)), ("residual", POINTER(c_uint16)),
                ("out", POINTER(c_uint16))]


class BufferSizes(Structure):
    _fields_ = [(n, c_size_t) for n in (
        "x", "residual", "out", "positions", "slots", "block_table", "context_lens",
        "mla_cache", "key_cache", "value_cache", "key_scale", "value_scale")]


class RunArgs(Structure):
    _fields_ = [("shape", BatchShape)] + _counted(
        *_ACTIVATIONS, ("positions", POINTER(c_int64)), ("slots", POINTER(c_int64)),
        ("block_table", POINTER(c_int32)), ("context_lens", POINTER(c_int32)), *_CACHES)


class LoadOptions(Structure):
    _fields_ = [("backend", c_char_p), ("max_tokens", c_int64), ("kv_cache", c_int32)]


class SequenceShape(Structure):
    _fields_ = [("tokens", c_int64), ("sequences", c_int64),
                ("max_blocks_per_sequence", c_int64), ("num_blocks", c_int64)]


class SequenceSizes(Structure):
    _fields_ = [(n, c_size_t) for n in (
        "x", "residual", "out", "query_start", "context_lens", "block_table", "positions",
        "slots", "mla_cache", "key_cache", "value_cache", "key_scale", "value_scale")]


class SequenceArgs(Structure):
    _fields_ = [("shape", SequenceShape)] + _counted(
        *_ACTIVATIONS, ("query_start", POINTER(c_int32)), ("context_lens", POINTER(c_int32)),
        ("block_table", POINTER(c_int32)), ("positions", POINTER(c_int64)),
        ("slots", POINTER(c_int64)), *_CACHES)


_fn = ctypes.CFUNCTYPE
_p = c_void_p  # opaque registration and pipeline handles


ALL_REDUCE_BF16 = _fn(c_int32, c_void_p, POINTER(c_uint16), POINTER(c_uint16), c_uint64, c_void_p)


class Communicator(Structure):
    _fields_ = [("rank", c_int32), ("size", c_int32), ("context", c_void_p),
                ("all_reduce_bf16", ALL_REDUCE_BF16)]


class Api(Structure):
    _fields_ = [
        ("abi_version", c_uint32),
        ("struct_size", c_uint32),
        ("last_error", _fn(c_char_p)),
        ("register_plugin", _fn(status, POINTER(c_char_p), POINTER(_p))),
        ("release_registration", _fn(None, _p)),
        ("registration_info", _fn(status, _p, POINTER(RegistrationInfo))),
        ("model", _fn(status, _p, c_size_t, POINTER(Model))),
        ("attention_backend", _fn(status, _p, c_size_t, POINTER(AttentionBackend))),
        ("create_pipeline", _fn(status, _p, c_char_p, c_char_p, c_char_p, c_uint64,
                                POINTER(_p))),
        ("destroy_pipeline", _fn(None, _p)),
        ("pipeline_info", _fn(status, _p, POINTER(PipelineInfo))),
        ("buffer_sizes", _fn(status, _p, POINTER(BatchShape), POINTER(BufferSizes))),
        ("run", _fn(status, _p, POINTER(RunArgs), c_void_p)),
        ("load_pipeline", _fn(status, _p, c_char_p, c_int64, c_char_p, POINTER(LoadOptions),
                              POINTER(_p))),
        ("sequence_sizes", _fn(status, _p, POINTER(SequenceShape), POINTER(SequenceSizes))),
        ("run_sequences", _fn(status, _p, POINTER(SequenceArgs), c_void_p)),
        ("workspace", _fn(status, _p, POINTER(c_int64), POINTER(c_size_t))),
        ("load_pipeline_tp", _fn(status, _p, c_char_p, c_int64, c_char_p, POINTER(LoadOptions),
                                 POINTER(Communicator), POINTER(_p))),
    ]


# Every struct the header defines, by its C name, for the layout test.
STRUCTS = {
    "atom_plugin_registration_info": RegistrationInfo,
    "atom_plugin_model": Model,
    "atom_plugin_attention_backend": AttentionBackend,
    "atom_plugin_pipeline_info": PipelineInfo,
    "atom_plugin_batch_shape": BatchShape,
    "atom_plugin_buffer_sizes": BufferSizes,
    "atom_plugin_run_args": RunArgs,
    "atom_plugin_load_options": LoadOptions,
    "atom_plugin_sequence_shape": SequenceShape,
    "atom_plugin_sequence_sizes": SequenceSizes,
    "atom_plugin_sequence_args": SequenceArgs,
    "atom_plugin_communicator": Communicator,
    "atom_plugin_api": Api,
}


class PluginError(RuntimeError):
    """A call into the plugin failed: `status` is its atom_plugin_status, the message its own."""

    def __init__(self, status_code, message):
        super().__init__(message)
        self.status = status_code
        self.status_name = STATUS_NAMES.get(status_code, str(status_code))


def library_path():
    """ATOM_PLUGIN_LIBRARY if set, else libatom_plugin.so.1 from the loader's search path."""
    return os.environ.get("ATOM_PLUGIN_LIBRARY") or "libatom_plugin.so.1"


_api = None


def api():
    """The version 4 function table, loaded once."""
    global _api
    if _api is None:
        path = library_path()
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        except OSError as e:
            raise PluginError(-1, f"cannot load the atom plugin '{path}' ({e}); set "
                                  "ATOM_PLUGIN_LIBRARY to the path of libatom_plugin.so") from e
        get_api = getattr(lib, ENTRY_POINT)
        get_api.restype = status
        get_api.argtypes = [c_uint32, POINTER(POINTER(Api)), POINTER(c_char_p)]
        table = POINTER(Api)()
        error = c_char_p()
        code = get_api(ABI_VERSION, ctypes.byref(table), ctypes.byref(error))
        if code != OK:
            raise PluginError(code, error.value.decode())
        _api = (lib, table.contents)  # the library stays loaded with the table
    return _api[1]


def check(code):
    """Raises PluginError with the plugin's message when `code` is not OK."""
    if code != OK:
        raise PluginError(code, api().last_error().decode())
