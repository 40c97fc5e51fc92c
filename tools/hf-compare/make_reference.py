#!/usr/bin/env python3
"""Tiny random DeepSeek-V3 and Qwen3-MoE checkpoints, with transformers' decoder-layer outputs.

Each model is built by transformers from a hub-style config.json and filled with seeded random
weights of realistic spread. The weights are written in three formats (bf16; FP8 e4m3 with
128x128 block scales as DeepSeek-V3 and Qwen3 FP8 exports store it; MXFP4 as AMD Quark exports
store it), and for sequences of several lengths the script records what transformers' decoder
layers compute on each format's dequantized weights. README.md beside this file describes every
file written and every rule used.

Usage: make_reference.py [--out DIR] [--models NAME ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

SEQUENCE_LENGTHS = (1, 5, 11, 16)
FORMATS = ("bf16", "fp8", "mxfp4")

FP8_MAX = 448.0
FP8_BLOCK = 128
MX_BLOCK = 32
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Midpoints between neighbouring e2m1 magnitudes, and whether a value exactly on the midpoint
# rounds up: ties go to the even code (0, 1.0, 2.0 and 4.0 have even codes).
E2M1_MIDPOINTS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True),
                  (2.5, False), (3.5, True), (5.0, False))

SAFETENSORS_METADATA = {"format": "pt"}


# ---- the models ---------------------------------------------------------------------------------

DEEPSEEK_V3_TINY = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 256,
    "initializer_range": 0.02,
    "intermediate_size": 192,
    "kv_lora_rank": 64,
    "max_position_embeddings": 128,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": 64,
    "moe_layer_freq": 1,
    "n_group": 4,
    "n_routed_experts": 16,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 4,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 3,
    "num_key_value_heads": 4,
    "num_nextn_predict_layers": 0,
    "pretraining_tp": 1,
    "q_lora_rank": 96,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 4,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 32,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 2,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "v_head_dim": 32,
    "vocab_size": 64,
}

QWEN3_30B_A3B_TINY = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "decoder_sparse_step": 1,
    "eos_token_id": 1,
    "head_dim": 32,
    "hidden_act": "silu",
    "hidden_size": 256,
    "initializer_range": 0.02,
    "intermediate_size": 192,
    "max_position_embeddings": 128,
    "max_window_layers": 3,
    "mlp_only_layers": [0],
    "model_type": "qwen3_moe",
    "moe_intermediate_size": 64,
    "norm_topk_prob": True,
    "num_attention_heads": 8,
    "num_experts": 16,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 3,
    "num_key_value_heads": 2,
    "output_router_logits": False,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "router_aux_loss_coef": 0.001,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 64,
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    seed: int
    config: dict
    # DeepSeek-V3 stores FP8 block scales as F32; Qwen3 FP8 exports store them as BF16 and list
    # the modules they leave in bf16 under modules_to_not_convert.
    fp8_scale_dtype: torch.dtype
    fp8_lists_unconverted: bool
    quark_exclude: tuple[str, ...]

    @property
    def is_deepseek(self) -> bool:
        return self.config["model_type"] == "deepseek_v3"

    @property
    def num_experts(self) -> int:
        c = self.config
        return c["n_routed_experts"] if self.is_deepseek else c["num_experts"]

    def is_moe_layer(self, layer: int) -> bool:
        c = self.config
        if self.is_deepseek:
            return layer >= c["first_k_dense_replace"] and layer % c["moe_layer_freq"] == 0
        return (layer not in c["mlp_only_layers"] and c["num_experts"] > 0
                and (layer + 1) % c["decoder_sparse_step"] == 0)

    @property
    def moe_layers(self) -> list[int]:
        return [l for l in range(self.config["num_hidden_layers"]) if self.is_moe_layer(l)]


MODELS = {
    "deepseek-v3-tiny": ModelSpec(
        name="deepseek-v3-tiny", seed=3, config=DEEPSEEK_V3_TINY,
        fp8_scale_dtype=torch.float32, fp8_lists_unconverted=False,
        quark_exclude=("lm_head", "re:.*mlp.gate$", "re:.*self_attn.*")),
    "qwen3-30b-a3b-tiny": ModelSpec(
        name="qwen3-30b-a3b-tiny", seed=30, config=QWEN3_30B_A3B_TINY,
        fp8_scale_dtype=torch.bfloat16, fp8_lists_unconverted=True,
        quark_exclude=("lm_head", "re:.*mlp.gate$")),
}


# ---- checkpoint layout and weights --------------------------------------------------------------

def _add_mlp(layout: dict, prefix: str, hidden: int, intermediate: int) -> None:
    layout[prefix + "gate_proj.weight"] = ((intermediate, hidden), "linear")
    layout[prefix + "up_proj.weight"] = ((intermediate, hidden), "linear")
    layout[prefix + "down_proj.weight"] = ((hidden, intermediate), "linear")


def tensor_layout(spec: ModelSpec) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor of the checkpoint, by its hub name: (shape, kind)."""
    c = spec.config
    h, vocab = c["hidden_size"], c["vocab_size"]
    layout: dict[str, tuple[tuple[int, ...], str]] = {
        "model.embed_tokens.weight": ((vocab, h), "embed"),
    }
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        a = p + "self_attn."
        layout[p + "input_layernorm.weight"] = ((h,), "norm")
        if spec.is_deepseek:
            heads, nope, rope = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"]
            q_lora, kv_lora, v = c["q_lora_rank"], c["kv_lora_rank"], c["v_head_dim"]
            layout[a + "q_a_proj.weight"] = ((q_lora, h), "linear")
            layout[a + "q_a_layernorm.weight"] = ((q_lora,), "norm")
            layout[a + "q_b_proj.weight"] = ((heads * (nope + rope), q_lora), "linear")
            layout[a + "kv_a_proj_with_mqa.weight"] = ((kv_lora + rope, h), "linear")
            layout[a + "kv_a_layernorm.weight"] = ((kv_lora,), "norm")
            layout[a + "kv_b_proj.weight"] = ((heads * (nope + v), kv_lora), "linear")
            layout[a + "o_proj.weight"] = ((h, heads * v), "linear")
        else:
            heads, kv_heads, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
            layout[a + "q_proj.weight"] = ((heads * d, h), "linear")
            layout[a + "k_proj.weight"] = ((kv_heads * d, h), "linear")
            layout[a + "v_proj.weight"] = ((kv_heads * d, h), "linear")
            layout[a + "o_proj.weight"] = ((h, heads * d), "linear")
            layout[a + "q_norm.weight"] = ((d,), "norm")
            layout[a + "k_norm.weight"] = ((d,), "norm")
        layout[p + "post_attention_layernorm.weight"] = ((h,), "norm")
        if spec.is_moe_layer(l):
            experts = spec.num_experts
            layout[p + "mlp.gate.weight"] = ((experts, h), "router")
            if spec.is_deepseek:
                layout[p + "mlp.gate.e_score_correction_bias"] = ((experts,), "router_bias")
            for e in range(experts):
                _add_mlp(layout, f"{p}mlp.experts.{e}.", h, c["moe_intermediate_size"])
            if spec.is_deepseek:
                _add_mlp(layout, p + "mlp.shared_experts.", h,
                         c["moe_intermediate_size"] * c["n_shared_experts"])
        else:
            _add_mlp(layout, p + "mlp.", h, c["intermediate_size"])
    layout["model.norm.weight"] = ((h,), "norm")
    layout["lm_head.weight"] = ((vocab, h), "lm_head")
    return layout


def _generator(spec: ModelSpec, what: str) -> torch.Generator:
    return torch.Generator().manual_seed(spec.seed * 1_000_003 + zlib.crc32(what.encode()))


def random_weights(spec: ModelSpec, layout: dict) -> dict[str, torch.Tensor]:
    """Seeded weights, each tensor from its own stream, every value exactly a bf16.

    Linear weights (and the router) are N(0, 1/fan_in), so activations stay O(1); norm weights
    1 + N(0, 0.2^2); the router correction bias N(0, 0.1^2); embeddings N(0, 1).
    """
    weights = {}
    for name, (shape, kind) in layout.items():
        x = torch.randn(shape, generator=_generator(spec, name), dtype=torch.float32)
        if kind in ("linear", "router", "lm_head"):
            x = x / math.sqrt(shape[-1])
        elif kind == "norm":
            x = 1.0 + 0.2 * x
        elif kind == "router_bias":
            x = 0.1 * x
        weights[name] = x.to(torch.bfloat16)
    return weights


def make_inputs(spec: ModelSpec, weights: dict) -> tuple[list[list[int]], list[torch.Tensor]]:
    """The hidden states entering layer 0: the embeddings of random tokens."""
    g = _generator(spec, "tokens")
    vocab = spec.config["vocab_size"]
    tokens = [torch.randint(0, vocab, (n,), generator=g) for n in SEQUENCE_LENGTHS]
    embed = weights["model.embed_tokens.weight"]
    return [t.tolist() for t in tokens], [embed[t].contiguous() for t in tokens]


# ---- the weight and activation formats ----------------------------------------------------------

def _expand_blocks(scale: torch.Tensor, rows: int, cols: int, block: int) -> torch.Tensor:
    return scale.float().repeat_interleave(block, 0).repeat_interleave(block, 1)[:rows, :cols]


def fp8_block_quantize(w: torch.Tensor, scale_dtype: torch.dtype):
    """FP8 e4m3fn with one scale per 128x128 block: scale = amax / 448 (1 for an all-zero block),
    stored in scale_dtype; q = e4m3fn(w / scale), round to nearest even, saturating at +-448.
    The scale tensor is [ceil(N/128), ceil(K/128)]; w = q * scale dequantizes."""
    n, k = w.shape
    nb, kb = -(-n // FP8_BLOCK), -(-k // FP8_BLOCK)
    padded = torch.zeros(nb * FP8_BLOCK, kb * FP8_BLOCK)
    padded[:n, :k] = w.float()
    amax = padded.view(nb, FP8_BLOCK, kb, FP8_BLOCK).abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).to(scale_dtype)
    full = _expand_blocks(scale, n, k, FP8_BLOCK)
    q = (w.float() / full).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def fp8_block_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    n, k = q.shape
    return q.float() * _expand_blocks(scale, n, k, FP8_BLOCK)


def fp8_group_fake_quant(x: torch.Tensor) -> torch.Tensor:
    """Activations as atom quantizes them for FP8 weights: per token, groups of 128 along K,
    scale = amax / 448 in float (1 for an all-zero group), e4m3fn(x / scale)."""
    xf = x.float()
    out = torch.empty_like(xf)
    for begin in range(0, xf.shape[-1], FP8_BLOCK):
        g = xf[..., begin:begin + FP8_BLOCK]
        amax = g.abs().amax(-1, keepdim=True)
        s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        out[..., begin:begin + FP8_BLOCK] = (
            (g / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * s)
    return out.to(x.dtype)


def mxfp4_quantize(x: torch.Tensor):
    """OCP MXFP4 along the last dimension, blocks of 32.

    Per block: shared exponent e = floor(log2(amax)) - 2 (2 = emax of e2m1), clamped below at
    -127; an all-zero block gets -127. Scale code = e + 127 (e8m0). Elements: x / 2^e rounded to
    the nearest e2m1 value (0, 0.5, 1, 1.5, 2, 3, 4, 6), ties to even, saturating at 6; sign in
    bit 3. Packed two per byte, element 2i in the low nibble.
    Returns (packed uint8 [..., K/2], scale codes uint8 [..., K/32]).
    """
    *lead, k = x.shape
    if k % MX_BLOCK:
        raise ValueError(f"MXFP4 needs K to be a multiple of {MX_BLOCK}, got {k}")
    blocks = x.float().reshape(*lead, k // MX_BLOCK, MX_BLOCK)
    amax = blocks.abs().amax(-1)
    _, exponent = torch.frexp(amax)  # amax = m * 2^exponent, 0.5 <= m < 1
    shared = torch.where(amax > 0, exponent - 1 - 2, torch.full_like(exponent, -127)).clamp(min=-127)
    scale = torch.pow(2.0, shared.double()).float()
    y = blocks / scale[..., None]
    magnitude = y.abs()
    code = torch.zeros_like(magnitude, dtype=torch.uint8)
    for midpoint, tie_up in E2M1_MIDPOINTS:
        code += (magnitude >= midpoint if tie_up else magnitude > midpoint).to(torch.uint8)
    nibbles = (code | ((y < 0).to(torch.uint8) << 3)).reshape(*lead, k)
    packed = nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)
    return packed.contiguous(), (shared + 127).to(torch.uint8).contiguous()


def mxfp4_dequantize(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    nibbles = torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(*packed.shape[:-1], -1)
    magnitude = torch.tensor(E2M1_VALUES)[(nibbles & 0x7).long()]
    values = torch.where((nibbles & 0x8) != 0, -magnitude, magnitude)
    factor = torch.pow(2.0, scale.double() - 127).float().repeat_interleave(MX_BLOCK, -1)
    return values * factor


def mxfp4_fake_quant(x: torch.Tensor) -> torch.Tensor:
    """Activations as atom quantizes them for MXFP4 weights (the same rule as the weights)."""
    return mxfp4_dequantize(*mxfp4_quantize(x.float())).to(x.dtype)


def quark_excluded(module: str, patterns) -> bool:
    """Quark's exclude list: a name, or 're:' and a regular expression the whole name matches."""
    for p in patterns:
        if p.startswith("re:"):
            if re.fullmatch(p[3:], module):
                return True
        elif module == p:
            return True
    return False


def quark_mxfp4_config(exclude) -> dict:
    """The quantization_config of a Quark MXFP4 export (as AMD's MXFP4 checkpoints ship it)."""
    tensor = {
        "ch_axis": -1, "dtype": "fp4", "group_size": MX_BLOCK, "is_dynamic": False,
        "is_scale_quant": False, "mx_element_dtype": None, "observer_cls": "PerBlockMXObserver",
        "qscheme": "per_group", "round_method": "half_even", "scale_calculation_mode": "even",
        "scale_format": "e8m0", "scale_type": "float", "symmetric": None,
    }
    return {
        "algo_config": None,
        "exclude": list(exclude),
        "export": {"kv_cache_group": [], "min_kv_scale": 0.0, "pack_method": "reorder",
                   "weight_format": "real_quantized", "weight_merge_groups": None},
        "global_quant_config": {"bias": None, "input_tensors": {**tensor, "is_dynamic": True},
                                "output_tensors": None, "target_device": None,
                                "weight": dict(tensor)},
        "kv_cache_post_rope": False,
        "kv_cache_quant_config": {},
        "layer_quant_config": {},
        "layer_type_quant_config": {},
        "quant_method": "quark",
        "quant_mode": "eager_mode",
        "softmax_quant_spec": None,
        "version": "0.11",
    }


@dataclass
class Checkpoint:
    stored: dict          # what the checkpoint file holds
    run_bf16: dict        # dequantized weights as the bf16 model runs them (hub names)
    run_f32: dict         # exactly dequantized weights, for the float32 model
    quantized: list       # modules whose weight is stored quantized
    config: dict          # config.json


def make_checkpoint(spec: ModelSpec, fmt: str, layout: dict, weights: dict) -> Checkpoint:
    stored, run_bf16, run_f32, quantized, unconverted = {}, {}, {}, [], []
    for name, w in weights.items():
        kind = layout[name][1]
        module = name.rsplit(".", 1)[0]
        quantize = kind == "linear" and (
            fmt == "fp8" or (fmt == "mxfp4" and not quark_excluded(module, spec.quark_exclude)))
        if not quantize:
            stored[name] = w.float() if kind == "router_bias" else w
            run_bf16[name], run_f32[name] = w, w.float()
            if module not in unconverted:
                unconverted.append(module)
            continue
        if fmt == "fp8":
            q, scale = fp8_block_quantize(w, spec.fp8_scale_dtype)
            stored[name], stored[name + "_scale_inv"] = q, scale
            exact = fp8_block_dequantize(q, scale)
        else:
            packed, scale = mxfp4_quantize(w)
            stored[name], stored[module + ".weight_scale"] = packed, scale
            exact = mxfp4_dequantize(packed, scale)
        run_bf16[name], run_f32[name] = exact.to(torch.bfloat16), exact
        quantized.append(module)

    config = copy.deepcopy(spec.config)
    if fmt == "fp8":
        q = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
             "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
        if spec.fp8_lists_unconverted:
            q["modules_to_not_convert"] = unconverted
        config["quantization_config"] = q
    elif fmt == "mxfp4":
        config["quantization_config"] = quark_mxfp4_config(spec.quark_exclude)
    return Checkpoint(stored, run_bf16, run_f32, quantized, config)


# ---- transformers -------------------------------------------------------------------------------

def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def load_config(config: dict, directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "config.json", config)
    return AutoConfig.from_pretrained(directory)


def config_as_transformers_writes_it(config: dict, scratch: Path) -> dict:
    cfg = load_config(config, scratch / "in")
    cfg.save_pretrained(scratch / "out")
    return json.loads((scratch / "out" / "config.json").read_text())


def _eager(make, **kwargs):
    kwargs["attn_implementation"] = "eager"
    try:
        return make(experts_implementation="eager", **kwargs)
    except (TypeError, ValueError):
        return make(**kwargs)


def build_model(config, dtype: torch.dtype):
    """The model as transformers builds it, with eager attention and the eager expert loop."""
    return _eager(AutoModelForCausalLM.from_config, config=config, dtype=dtype).eval()


def load_pretrained(directory: Path, dtype: torch.dtype):
    model, info = _eager(AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=directory,
                         dtype=dtype, output_loading_info=True)
    return model.eval(), info


def load_weights(model, weights: dict) -> None:
    """Loads hub-named weights into the model, fusing per-expert tensors where the model keeps
    its experts as 3-D tensors (gate_up_proj [E, 2I, H] = gate rows then up rows; down_proj
    [E, H, I])."""
    state = model.state_dict()
    used, new_state = set(), {}
    for key, ref in state.items():
        if key in weights:
            t = weights[key]
            used.add(key)
        elif key.endswith(".experts.gate_up_proj") or key.endswith(".experts.down_proj"):
            prefix, proj = key.rsplit(".", 1)
            parts = []
            for e in range(ref.shape[0]):
                names = ([f"{prefix}.{e}.gate_proj.weight", f"{prefix}.{e}.up_proj.weight"]
                         if proj == "gate_up_proj" else [f"{prefix}.{e}.down_proj.weight"])
                used.update(names)
                parts.append(torch.cat([weights[n] for n in names], dim=0))
            t = torch.stack(parts)
        else:
            raise KeyError(f"no checkpoint tensor for model tensor {key}")
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"{key}: checkpoint gives {tuple(t.shape)}, model has {tuple(ref.shape)}")
        new_state[key] = t.to(ref.dtype)
    unused = sorted(set(weights) - used)
    if unused:
        raise KeyError(f"checkpoint tensors the model does not use: {unused[:5]}")
    model.load_state_dict(new_state, strict=True)


class ActivationQuant:
    """Quantizes the input of every F.linear call made inside the given modules (nn.Linear and the
    fused expert modules both call F.linear), as atom quantizes a GEMM's input."""

    def __init__(self, model, module_names, quantize):
        self.quantize = quantize
        self.modules = [m for n, m in model.named_modules() if n in module_names]
        self.depth = 0
        self.calls = 0

    def _linear(self, x, weight, bias=None):
        if self.depth:
            x = self.quantize(x)
            self.calls += 1
        return self.original(x, weight, bias)

    def __enter__(self):
        self.original = torch.nn.functional.linear
        torch.nn.functional.linear = self._linear
        self.handles = []
        for m in self.modules:
            self.handles.append(m.register_forward_pre_hook(lambda *_: self._enter()))
            self.handles.append(m.register_forward_hook(lambda *_: self._leave()))
        return self

    def _enter(self):
        self.depth += 1

    def _leave(self):
        self.depth -= 1

    def __exit__(self, *exc):
        torch.nn.functional.linear = self.original
        for h in self.handles:
            h.remove()


@dataclass
class Run:
    outputs: dict       # (s, l) -> [len, hidden] float32, the decoder layer's output
    gate_inputs: dict   # (s, l) -> the router's input, as the model computed it
    used_routes: dict   # (s, l) -> the expert indices the model's expert module was called with


def run_model(model, spec: ModelSpec, inputs, layer_inputs=None, act_quant=None) -> Run:
    """Runs each sequence alone (positions 0..len-1, no cache, causal). With layer_inputs, every
    decoder layer's input is replaced by the given one, so each layer runs in isolation."""
    hidden = spec.config["hidden_size"]
    dtype = next(model.parameters()).dtype
    run = Run({}, {}, {})
    current = {}
    handles = []

    def replace_input(l):
        def hook(module, args, kwargs):
            if layer_inputs is None:
                return None
            x = layer_inputs[(current["s"], l)].to(dtype).reshape(1, -1, hidden)
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}
        return hook

    def record_output(l):
        def hook(module, args, output):
            h = output[0] if isinstance(output, (tuple, list)) else output
            run.outputs[(current["s"], l)] = h.reshape(-1, hidden).float().clone()
        return hook

    def record_gate_input(l):
        def hook(module, args):
            run.gate_inputs[(current["s"], l)] = args[0].reshape(-1, hidden).detach().clone()
        return hook

    def record_routes(l):
        def hook(module, args, kwargs):
            for a in (*args, *kwargs.values()):
                if torch.is_tensor(a) and not a.is_floating_point() and a.dim() == 2:
                    run.used_routes[(current["s"], l)] = a.detach().clone()
                    return
        return hook

    for l, layer in enumerate(model.model.layers):
        handles.append(layer.register_forward_pre_hook(replace_input(l), with_kwargs=True))
        handles.append(layer.register_forward_hook(record_output(l)))
        if spec.is_moe_layer(l):
            handles.append(layer.mlp.gate.register_forward_pre_hook(record_gate_input(l)))
            handles.append(layer.mlp.experts.register_forward_pre_hook(record_routes(l),
                                                                       with_kwargs=True))
    try:
        with torch.inference_mode():
            for s, x in enumerate(inputs):
                current["s"] = s
                model(inputs_embeds=x.to(dtype)[None], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return run


# ---- routing ------------------------------------------------------------------------------------

@dataclass
class Selection:
    experts: torch.Tensor        # [T, top_k] ascending
    margin: torch.Tensor         # [T] k-th chosen score minus the best unchosen one
    group_margin: torch.Tensor | None
    zero_fill_differs: int = 0   # tokens where masking dropped groups with 0 instead of -inf differs


def select_experts(spec: ModelSpec, x: torch.Tensor, weights: dict, layer: int) -> Selection:
    """The router as transformers computes it, with the margins of its choices."""
    c = spec.config
    k = c["num_experts_per_tok"]
    p = f"model.layers.{layer}.mlp.gate."
    if not spec.is_deepseek:
        logits = F.linear(x, weights[p + "weight"].to(x.dtype))
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        ordered = probs.sort(dim=-1, descending=True).values
        experts = probs.topk(k, dim=-1).indices.sort(dim=-1).values
        return Selection(experts, ordered[:, k - 1] - ordered[:, k], None)

    groups, keep_groups, n = c["n_group"], c["topk_group"], spec.num_experts
    scores = torch.sigmoid(F.linear(x.float(), weights[p + "weight"].float()))
    choice = scores + weights[p + "e_score_correction_bias"].float()
    group_scores = choice.view(-1, groups, n // groups).topk(2, dim=-1).values.sum(-1)
    ordered_groups = group_scores.sort(dim=-1, descending=True).values
    group_margin = ordered_groups[:, keep_groups - 1] - ordered_groups[:, keep_groups]
    group_idx = group_scores.topk(keep_groups, dim=-1).indices
    group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1.0).bool()
    expert_mask = group_mask.repeat_interleave(n // groups, dim=1)
    masked = choice.masked_fill(~expert_mask, float("-inf"))
    ordered = masked.sort(dim=-1, descending=True).values
    experts = masked.topk(k, dim=-1).indices.sort(dim=-1).values
    # Earlier transformers versions masked with 0.0, which can pick an expert of a dropped
    # group when every remaining score is negative; count where that would differ.
    zero_fill = choice.masked_fill(~expert_mask, 0.0).topk(k, dim=-1).indices.sort(-1).values
    differs = int((zero_fill != experts).any(-1).sum())
    return Selection(experts, ordered[:, k - 1] - ordered[:, k], group_margin, differs)


# ---- an independent float32 implementation of the decoder layers --------------------------------
# Written from the models' definitions against the hub tensors; agreement with transformers'
# float32 run checks the tensor names and layouts and the semantics README.md states.

def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def swiglu(w, prefix, x):
    gate = F.linear(x, w[prefix + "gate_proj.weight"])
    up = F.linear(x, w[prefix + "up_proj.weight"])
    return F.linear(F.silu(gate) * up, w[prefix + "down_proj.weight"])


def causal_attention(q, k, v, scale):
    """q, k [T, heads, d], v [T, heads, dv] -> [T, heads, dv]."""
    t = q.shape[0]
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), v)


def yarn_mscale(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def deepseek_rope(c):
    """YaRN: (inv_freq [rope/2], cos/sin factor, softmax scale)."""
    dim, base, r = c["qk_rope_head_dim"], float(c["rope_theta"]), c["rope_scaling"]
    factor, original = float(r["factor"]), r["original_max_position_embeddings"]

    def correction_dim(rotations):
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(r["beta_fast"])), 0)
    high = min(math.ceil(correction_dim(r["beta_slow"])), dim - 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 0.001)).clamp(0, 1)
    extrapolation = 1.0 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    cos_sin_factor = yarn_mscale(factor, r["mscale"]) / yarn_mscale(factor, r["mscale_all_dim"])
    softmax_scale = ((c["qk_nope_head_dim"] + dim) ** -0.5
                     * yarn_mscale(factor, r["mscale_all_dim"]) ** 2)
    return inv_freq, cos_sin_factor, softmax_scale


def rope_interleaved(x, cos, sin):
    """Rotates the pairs (x[2i], x[2i+1]) by the angle of frequency i. x [T, heads, d]."""
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)


def rope_halves(x, cos, sin):
    """Rotates the pairs (x[i], x[i + d/2]) by the angle of frequency i. x [T, heads, d]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def independent_layer(spec: ModelSpec, w: dict, layer: int, x: torch.Tensor) -> torch.Tensor:
    c = spec.config
    eps = c["rms_norm_eps"]
    t, heads = x.shape[0], c["num_attention_heads"]
    positions = torch.arange(t, dtype=torch.float32)
    p = f"model.layers.{layer}."
    a = p + "self_attn."
    h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
    if spec.is_deepseek:
        nope, rope, v_dim = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
        kv_lora = c["kv_lora_rank"]
        q_a = rms_norm(F.linear(h, w[a + "q_a_proj.weight"]), w[a + "q_a_layernorm.weight"], eps)
        q = F.linear(q_a, w[a + "q_b_proj.weight"]).view(t, heads, nope + rope)
        q_nope, q_pe = q.split([nope, rope], dim=-1)
        latent, k_pe = F.linear(h, w[a + "kv_a_proj_with_mqa.weight"]).split([kv_lora, rope], -1)
        latent = rms_norm(latent, w[a + "kv_a_layernorm.weight"], eps)
        kv = F.linear(latent, w[a + "kv_b_proj.weight"]).view(t, heads, nope + v_dim)
        k_nope, v = kv.split([nope, v_dim], dim=-1)
        inv_freq, factor, scale = deepseek_rope(c)
        angle = positions[:, None] * inv_freq[None, :]
        cos, sin = angle.cos() * factor, angle.sin() * factor
        q_pe = rope_interleaved(q_pe, cos, sin)
        k_pe = rope_interleaved(k_pe[:, None, :], cos, sin).expand(t, heads, rope)
        o = causal_attention(torch.cat([q_nope, q_pe], -1), torch.cat([k_nope, k_pe], -1), v, scale)
    else:
        d, kv_heads = c["head_dim"], c["num_key_value_heads"]
        q = rms_norm(F.linear(h, w[a + "q_proj.weight"]).view(t, heads, d), w[a + "q_norm.weight"], eps)
        k = rms_norm(F.linear(h, w[a + "k_proj.weight"]).view(t, kv_heads, d), w[a + "k_norm.weight"], eps)
        v = F.linear(h, w[a + "v_proj.weight"]).view(t, kv_heads, d)
        inv_freq = 1.0 / (float(c["rope_theta"]) ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        angle = positions[:, None] * inv_freq[None, :]
        q, k = rope_halves(q, angle.cos(), angle.sin()), rope_halves(k, angle.cos(), angle.sin())
        group = heads // kv_heads
        o = causal_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), d ** -0.5)
    x = x + F.linear(o.reshape(t, -1), w[a + "o_proj.weight"])

    h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
    if not spec.is_moe_layer(layer):
        return x + swiglu(w, p + "mlp.", h)
    top_k = c["num_experts_per_tok"]
    logits = F.linear(h, w[p + "mlp.gate.weight"])
    if spec.is_deepseek:
        scores = torch.sigmoid(logits)
        experts = select_experts(spec, h, w, layer).experts
        weights = scores.gather(1, experts)
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20) * c["routed_scaling_factor"]
        out = swiglu(w, p + "mlp.shared_experts.", h)
    else:
        top = torch.softmax(logits, dim=-1).topk(top_k, dim=-1)
        experts, weights = top.indices, top.values / top.values.sum(-1, keepdim=True)
        out = torch.zeros_like(h)
    for token in range(t):
        for j in range(top_k):
            e = int(experts[token, j])
            out[token] += weights[token, j] * swiglu(w, f"{p}mlp.experts.{e}.", h[token:token + 1])[0]
    return x + out


# ---- references ---------------------------------------------------------------------------------

def isolated_inputs(inputs, run: Run, layers: int) -> dict:
    """Layer l's input: the hidden state entering layer 0 for l = 0, else run's output of l - 1."""
    out = {}
    for s, x in enumerate(inputs):
        out[(s, 0)] = x.float()
        for l in range(1, layers):
            out[(s, l)] = run.outputs[(s, l - 1)]
    return out


def reference_tensors(spec: ModelSpec, inputs, run: Run, weights: dict, stats: dict) -> dict:
    tensors = {}
    mismatched = differs = 0
    for s, x in enumerate(inputs):
        tensors[f"hidden.{s}"] = x.contiguous()
        for l in range(spec.config["num_hidden_layers"]):
            tensors[f"hidden.{s}.layer.{l}"] = run.outputs[(s, l)].contiguous()
            if not spec.is_moe_layer(l):
                continue
            sel = select_experts(spec, run.gate_inputs[(s, l)], weights, l)
            route = run.used_routes.get((s, l))
            if route is None:
                route = sel.experts
            else:
                route = route.sort(dim=-1).values
                mismatched += int((route != sel.experts).any(-1).sum())
            differs += sel.zero_fill_differs
            tensors[f"route.{s}.layer.{l}"] = route.to(torch.int32).contiguous()
            tensors[f"route_margin.{s}.layer.{l}"] = sel.margin.float().contiguous()
            if sel.group_margin is not None:
                tensors[f"group_margin.{s}.layer.{l}"] = sel.group_margin.float().contiguous()
    stats["routes_captured"] = bool(run.used_routes)
    stats["routes_recomputed_differ"] = mismatched
    if spec.is_deepseek:
        stats["routes_zero_fill_vs_minus_inf_differ"] = differs
    return tensors


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def per_layer_rel_l2(spec, inputs, got: dict, want: dict) -> list[float]:
    result = []
    for l in range(spec.config["num_hidden_layers"]):
        num = sum(float((got[(s, l)].double() - want[(s, l)].double()).pow(2).sum())
                  for s in range(len(inputs)))
        den = sum(float(want[(s, l)].double().pow(2).sum()) for s in range(len(inputs)))
        result.append(math.sqrt(num / den))
    return result


def fp8_dequantize_check(spec: ModelSpec, directory: Path, model16, ckpt: Checkpoint) -> dict:
    """Loads the FP8 checkpoint with transformers' own dequantization to bf16 and lists the
    weights where it differs from this script's. transformers derives the block size from the
    weight and scale shapes (rows / scale rows), which differs from 128 when a dimension is not
    a multiple of 128 and more than one block long."""
    try:
        from transformers import FineGrainedFP8Config
        model, info = _eager(AutoModelForCausalLM.from_pretrained,
                             pretrained_model_name_or_path=directory, dtype=torch.bfloat16,
                             quantization_config=FineGrainedFP8Config(dequantize=True),
                             output_loading_info=True)
    except Exception as e:  # the check is informative; the data do not depend on it
        return {"error": f"{type(e).__name__}: {e}"}
    load_weights(model16, ckpt.run_bf16)
    ours = model16.state_dict()
    differ = {}
    for key, t in model.state_dict().items():
        if key not in ours:
            differ[key] = "not in the model built here"
        elif t.shape != ours[key].shape:
            differ[key] = f"shape {list(t.shape)}"
        else:
            d = float((t.float() - ours[key].float()).abs().max())
            if d > 0:
                differ[key] = d
    return {"loading_info": {k: sorted(map(str, v)) for k, v in info.items()},
            "weights_that_differ": differ}


def tensor_listing(path: Path) -> dict:
    listing = {}
    with safe_open(path, framework="pt") as f:
        for name in sorted(f.keys()):
            t = f.get_slice(name)
            listing[name] = {"dtype": t.get_dtype(), "shape": list(t.get_shape())}
    return listing


def make_model(spec: ModelSpec, out_root: Path) -> None:
    out = out_root / spec.name
    out.mkdir(parents=True, exist_ok=True)
    layers = spec.config["num_hidden_layers"]
    layout = tensor_layout(spec)
    weights = random_weights(spec, layout)
    tokens, inputs = make_inputs(spec, weights)
    save_file({f"hidden.{s}": x for s, x in enumerate(inputs)}, out / "input.safetensors",
              metadata=SAFETENSORS_METADATA)

    checks = {
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "sequence_lengths": list(SEQUENCE_LENGTHS),
        "tokens": tokens,
        "moe_layers": spec.moe_layers,
        "formats": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = load_config(spec.config, tmp / "config")
        model16 = build_model(config, torch.bfloat16)
        model32 = build_model(config, torch.float32)
        checks["attn_implementation"] = getattr(model16.config, "_attn_implementation", None)
        checks["experts_implementation"] = getattr(model16.config, "_experts_implementation", None)
        checks["layer_mlp_classes"] = [type(layer.mlp).__name__ for layer in model16.model.layers]
        checks["model_tensors"] = {k: list(v.shape) for k, v in model16.state_dict().items()
                                   if ".layers.1." in k or ".layers." not in k}
        attention = model16.model.layers[0].self_attn
        rotary = model16.model.rotary_emb
        checks["softmax_scale"] = float(attention.scaling)
        checks["rope_inv_freq"] = [float(f) for f in rotary.inv_freq]
        checks["rope_cos_sin_factor"] = float(rotary.attention_scaling)
        if spec.is_deepseek:
            inv_freq, factor, scale = deepseek_rope(spec.config)
            checks["rope_inv_freq_yarn_formula_max_abs_diff"] = float(
                (inv_freq - rotary.inv_freq.float()).abs().max())
            checks["rope_cos_sin_factor_yarn_formula"] = factor
            checks["softmax_scale_yarn_formula"] = scale

        # What transformers' save_pretrained writes for these weights.
        load_weights(model16, weights)
        model16.save_pretrained(tmp / "saved")
        saved = tensor_listing(tmp / "saved" / "model.safetensors")
        write_json(out / "transformers.tensors.json", saved)
        checks["save_pretrained_writes_hub_names"] = sorted(saved) == sorted(layout)

        bf16_run = None
        for fmt in FORMATS:
            stats = {}
            ckpt = make_checkpoint(spec, fmt, layout, weights)
            d = out / fmt
            d.mkdir(exist_ok=True)
            write_json(d / "config.json", ckpt.config)
            write_json(d / "config.transformers.json",
                       config_as_transformers_writes_it(ckpt.config, tmp / f"config-{fmt}"))
            save_file(ckpt.stored, d / "model.safetensors", metadata=SAFETENSORS_METADATA)

            load_weights(model16, ckpt.run_bf16)
            run = run_model(model16, spec, inputs)
            save_file(reference_tensors(spec, inputs, run, ckpt.run_bf16, stats),
                      d / "reference.safetensors", metadata=SAFETENSORS_METADATA)
            if fmt == "bf16":
                bf16_run = run
            layer_inputs = isolated_inputs(inputs, run, layers)

            load_weights(model32, ckpt.run_f32)
            run32 = run_model(model32, spec, inputs, layer_inputs=layer_inputs)
            stats32 = {}
            save_file(reference_tensors(spec, inputs, run32, ckpt.run_f32, stats32),
                      d / "reference_f32.safetensors", metadata=SAFETENSORS_METADATA)
            stats["f32_run"] = stats32
            stats["bf16_vs_f32_rel_l2"] = per_layer_rel_l2(spec, inputs, run.outputs, run32.outputs)

            with torch.inference_mode():
                independent = {key: independent_layer(spec, ckpt.run_f32, key[1], x)
                               for key, x in layer_inputs.items()}
            stats["independent_vs_transformers_f32_rel_l2"] = per_layer_rel_l2(
                spec, inputs, independent, run32.outputs)

            if fmt != "bf16":
                # kv_b_proj is absorbed into the attention BMMs in atom, which quantize other
                # operands; its input stays bf16 here.
                targets = {m for m in ckpt.quantized if not m.endswith("kv_b_proj")}
                targets |= {re.sub(r"\.experts\.\d+\..*$", ".experts", m) for m in ckpt.quantized
                            if ".experts." in m}
                quant = fp8_group_fake_quant if fmt == "fp8" else mxfp4_fake_quant
                with ActivationQuant(model16, targets, quant) as aq:
                    run_q = run_model(model16, spec, inputs, layer_inputs=layer_inputs)
                statsq = {"quantized_gemm_inputs": aq.calls}
                save_file(reference_tensors(spec, inputs, run_q, ckpt.run_bf16, statsq),
                          d / "reference_actq.safetensors", metadata=SAFETENSORS_METADATA)
                stats["actq_run"] = statsq
                stats["actq_vs_bf16_rel_l2"] = per_layer_rel_l2(spec, inputs, run_q.outputs,
                                                                run.outputs)
            checks["formats"][fmt] = stats

        checks["fp8_dequantized_by_transformers"] = fp8_dequantize_check(
            spec, out / "fp8", model16, make_checkpoint(spec, "fp8", layout, weights))

        # The hub-layout bf16 checkpoint, loaded by transformers itself.
        reloaded, info = load_pretrained(out / "bf16", torch.bfloat16)
        rerun = run_model(reloaded, spec, inputs)
        checks["reload_bf16"] = {
            "loading_info": {k: sorted(map(str, v)) for k, v in info.items()},
            "max_abs_diff": max(float((rerun.outputs[key] - bf16_run.outputs[key]).abs().max())
                                for key in bf16_run.outputs),
        }

        if spec.is_deepseek:
            # How much YaRN changes layer 0 at these lengths: the same weights without it.
            plain = {k: v for k, v in spec.config.items() if k != "rope_scaling"}
            model_plain = build_model(load_config(plain, tmp / "config-plain"), torch.bfloat16)
            load_weights(model_plain, weights)
            run_plain = run_model(model_plain, spec, inputs)
            checks["yarn_effect_on_layer0_rel_l2"] = per_layer_rel_l2(
                spec, inputs, run_plain.outputs, bf16_run.outputs)[0]
    write_json(out / "checks.json", checks)
    print(f"{spec.name}: wrote {out}")
    print(json.dumps({k: v for k, v in checks.items() if k not in ("model_tensors", "tokens")},
                     indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/model/hf"))
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True, warn_only=True)
    for name in args.models:
        make_model(MODELS[name], args.out)


if __name__ == "__main__":
    main()
