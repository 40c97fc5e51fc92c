#!/usr/bin/env python3
"""Writes the reference safetensors files that tests/io reads back.

    python3 make_reference.py [--backend torch|pure] [--check] [OUTDIR]

--backend torch (the default when torch and safetensors import) writes the files with the
reference library, safetensors.torch.save_file. --backend pure writes them with the small
format writer below, which follows the reference library's layout: tensors ordered by descending
dtype (in the reference Dtype enum's order) then by name, compact JSON with "__metadata__" first
and tensors in data order, padded with spaces to a multiple of 8 bytes, and the shard index as
json.dumps(indent=2, sort_keys=True). --check writes into a scratch folder and compares every
file byte for byte with the committed ones in this folder (exit status 1 on a difference).

The committed files were checked with --check against safetensors 0.8.0 and torch 2.11: both
backends reproduce them byte for byte.

Tensor bytes follow pattern() so that the C++ test recomputes them independently; the table of
tensors is mirrored in tests/io/reference_test.cpp.
"""
import argparse
import filecmp
import json
import os
import struct
import sys
import tempfile

# The reference library's Dtype enum order (it decides the data layout).
DTYPE_ORDER = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3",
               "F8_E8M0", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64",
               "I64", "U64"]
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
               "I16": 2, "F16": 2, "BF16": 2, "I32": 4, "F32": 4, "F64": 8, "I64": 8}
TORCH_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E5M2": "float8_e5m2",
                "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu", "I16": "int16",
                "F16": "float16", "BF16": "bfloat16", "I32": "int32", "F32": "float32",
                "F64": "float64", "I64": "int64"}

# (name, dtype, shape, seed)
DTYPES_FILE = [
    ("bf16", "BF16", [3, 5], 1),
    ("bool", "BOOL", [17], 2),
    ("f16", "F16", [2, 3, 4], 3),
    ("f32", "F32", [7], 4),
    ("f64", "F64", [1, 3], 5),
    ("f8_e4m3", "F8_E4M3", [4, 17], 6),
    ("f8_e5m2", "F8_E5M2", [19], 7),
    ("f8_e8m0", "F8_E8M0", [5, 1], 8),
    ("i16", "I16", [9], 9),
    ("i32", "I32", [2, 2], 10),
    ("i64", "I64", [3], 11),
    ("i8", "I8", [1], 12),
    ("u8", "U8", [6, 2], 13),
    ("scalar", "F32", [], 14),
    ("empty", "BF16", [0, 4], 15),
]
# MXFP4: two e2m1 values per byte, one e8m0 scale per 32 values.
MXFP4_FILE = [
    ("model.layers.0.mlp.down_proj.weight", "U8", [8, 16], 21),
    ("model.layers.0.mlp.down_proj.weight_scale", "F8_E8M0", [8, 1], 22),
    ("model.layers.0.mlp.gate_up_proj.weight", "U8", [3, 32], 23),
    ("model.layers.0.mlp.gate_up_proj.weight_scale", "F8_E8M0", [3, 2], 24),
    ("model.layers.0.input_layernorm.weight", "BF16", [64], 25),
]
SHARDS = [
    ("model-00001-of-00002.safetensors", [
        ("model.embed_tokens.weight", "BF16", [11, 8], 31),
        ("model.layers.0.self_attn.q_proj.weight", "F8_E4M3", [8, 8], 32),
        ("model.layers.0.self_attn.q_proj.weight_scale", "F32", [1], 33),
    ]),
    ("model-00002-of-00002.safetensors", [
        ("model.layers.0.self_attn.o_proj.weight", "F8_E4M3", [8, 8], 34),
        ("model.layers.0.self_attn.o_proj.weight_scale", "F32", [1], 35),
        ("model.norm.weight", "BF16", [8], 36),
        ("lm_head.weight", "BF16", [11, 8], 37),
    ]),
]
METADATA = {"format": "pt"}


def pattern(dtype, shape, seed):
    n = DTYPE_BYTES[dtype]
    for d in shape:
        n *= d
    if dtype == "BOOL":
        return bytes(1 if (i * 7 + seed) % 3 == 0 else 0 for i in range(n))
    return bytes((i * 73 + seed * 29 + 11) & 0xFF for i in range(n))


def pure_save(table, path, metadata):
    order = sorted(table, key=lambda t: (-DTYPE_ORDER.index(t[1]), t[0]))
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name, dtype, shape, seed in order:
        data = pattern(dtype, shape, seed)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def torch_save(table, path, metadata):
    import torch
    from safetensors.torch import save_file
    tensors = {}
    for name, dtype, shape, seed in table:
        data = bytearray(pattern(dtype, shape, seed))
        raw = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        tensors[name] = raw.view(getattr(torch, TORCH_DTYPES[dtype])).reshape(shape).clone()
    save_file(tensors, path, metadata=metadata)


def write_all(outdir, save):
    save(DTYPES_FILE, os.path.join(outdir, "dtypes.safetensors"), METADATA)
    save(MXFP4_FILE, os.path.join(outdir, "mxfp4.safetensors"), METADATA)
    sharded = os.path.join(outdir, "sharded")
    os.makedirs(sharded, exist_ok=True)
    weight_map = {}
    total = 0
    for file, table in SHARDS:
        save(table, os.path.join(sharded, file), METADATA)
        for name, dtype, shape, seed in table:
            weight_map[name] = file
            total += len(pattern(dtype, shape, seed))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    with open(os.path.join(sharded, "model.safetensors.index.json"), "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return ["dtypes.safetensors", "mxfp4.safetensors"] + [
        os.path.join("sharded", f) for f in [s[0] for s in SHARDS] + ["model.safetensors.index.json"]]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch", "pure"])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("outdir", nargs="?", default=here)
    args = parser.parse_args()
    backend = args.backend
    if backend is None:
        try:
            import safetensors.torch  # noqa: F401
            backend = "torch"
        except ImportError:
            backend = "pure"
    save = torch_save if backend == "torch" else pure_save
    if not args.check:
        write_all(args.outdir, save)
        print(f"wrote reference files with the {backend} backend into {args.outdir}")
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        names = write_all(scratch, save)
        differ = [n for n in names
                  if not filecmp.cmp(os.path.join(scratch, n), os.path.join(here, n), shallow=False)]
    for n in differ:
        print(f"differs from the committed file: {n}")
    print(f"{backend} backend: {len(names) - len(differ)} of {len(names)} files identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
