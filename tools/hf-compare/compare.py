#!/usr/bin/env python3
"""Compares atom-run's --output with a transformers reference written by make_reference.py.

  compare.py check REF OUT [options]   per-layer errors and route agreement; exit 1 on failure
  compare.py input REF LAYER IN        writes IN: the reference input of LAYER as atom-run's
                                       --input (hidden.<s> bf16), for running LAYER in isolation

Plain Python 3 (no packages): the safetensors files are read and written here directly.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import struct
import sys
from array import array


# ---- safetensors --------------------------------------------------------------------------------

class Tensor:
    def __init__(self, dtype: str, shape: list[int], values):
        self.dtype, self.shape, self.values = dtype, shape, values

    def row(self, i: int):
        n = self.shape[-1]
        return self.values[i * n:(i + 1) * n]


_ARRAY_CODES = {"F32": "f", "F64": "d", "I32": "i", "I64": "q", "U8": "B", "I8": "b"}


def _from_bytes(code: str, raw: bytes) -> array:
    a = array(code)
    a.frombytes(raw)
    if sys.byteorder == "big":
        a.byteswap()
    return a


def read_safetensors(path: str) -> dict[str, Tensor]:
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (shorter than its header length)")
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin:base + end]
        dtype = info["dtype"]
        if dtype == "BF16":
            bits = _from_bytes("H", raw)
            values = _from_bytes("f", array("I", (b << 16 for b in bits)).tobytes())
        elif dtype in _ARRAY_CODES:
            values = _from_bytes(_ARRAY_CODES[dtype], raw)
        else:
            raise ValueError(f"{path}: tensor {name} has dtype {dtype}, which this script does not read")
        tensors[name] = Tensor(dtype, info["shape"], values)
    return tensors


def to_bf16_bits(values) -> array:
    """Rounds float32 values to bf16, to nearest even."""
    bits = _from_bytes("I", array("f", values).tobytes())
    out = array("H")
    for b in bits:
        if (b & 0x7FFFFFFF) > 0x7F800000:
            raise ValueError("NaN in a tensor to be written as bf16")
        out.append(((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF)
    return out


def write_safetensors(path: str, tensors: dict[str, tuple[str, list[int], array]]) -> None:
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (dtype, shape, values) in tensors.items():
        if sys.byteorder == "big":
            values = array(values.typecode, values)
            values.byteswap()
        raw = values.tobytes()
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for raw in chunks:
            f.write(raw)


# ---- reference structure ------------------------------------------------------------------------

def sequences(ref: dict) -> list[int]:
    return sorted(int(m.group(1)) for n in ref if (m := re.fullmatch(r"hidden\.(\d+)", n)))


def layers_in(tensors: dict) -> list[int]:
    return sorted({int(m.group(1)) for n in tensors
                   if (m := re.fullmatch(r"hidden\.\d+\.layer\.(\d+)", n))})


def layer_input(ref: dict, s: int, layer: int) -> Tensor:
    """The hidden state entering `layer` in the reference."""
    name = f"hidden.{s}" if layer == 0 else f"hidden.{s}.layer.{layer - 1}"
    if name not in ref:
        raise KeyError(f"the reference has no {name}")
    return ref[name]


def near_ties(ref: dict, s: int, layer: int, delta: float, group_delta: float) -> set[int]:
    """Tokens whose route is within delta of a tie (top-k margin or, for DeepSeek, group margin)."""
    ties = set()
    margin = ref.get(f"route_margin.{s}.layer.{layer}")
    if margin is not None:
        ties |= {t for t, m in enumerate(margin.values) if not m > delta}
    group = ref.get(f"group_margin.{s}.layer.{layer}")
    if group is not None:
        ties |= {t for t, m in enumerate(group.values) if not m > group_delta}
    return ties


# ---- check --------------------------------------------------------------------------------------

def check(args) -> int:
    ref, out = read_safetensors(args.reference), read_safetensors(args.output)
    seqs = sequences(ref)
    layers = layers_in(out)
    if args.layers:
        a, _, b = args.layers.partition(":")
        lo, hi = (0, int(a)) if not b else (int(a), int(b))
        layers = [l for l in layers if lo <= l < hi]
    if not layers:
        print(f"{args.output}: no hidden.<s>.layer.<l> tensors to compare", file=sys.stderr)
        return 1

    failures = []
    # chained mode: a near tie at token t of sequence s leaves out t and everything after it
    # (attention carries the difference forward) in this and every later layer.
    cut = {s: None for s in seqs}
    print(f"reference {args.reference}\noutput    {args.output}\n"
          f"mode {args.mode}, near tie: route margin <= {args.delta}"
          f", group margin <= {args.group_delta}")
    print(f"{'layer':>5} {'kind':>5} {'tokens':>6} {'ties':>4} {'left_out':>8} "
          f"{'rel_l2':>9} {'block_rel_l2':>12} {'routes_agree':>12} {'tie_routes_agree':>16}")
    for layer in layers:
        is_moe = any(f"route.{s}.layer.{layer}" in ref for s in seqs)
        num = den = block_den = 0.0
        tokens = ties_total = left_out = 0
        agree = compared = tie_agree = tie_compared = 0
        for s in seqs:
            name = f"hidden.{s}.layer.{layer}"
            if name not in out:
                failures.append(f"layer {layer}: the output has no {name}")
                continue
            want, got, x = ref[name], out[name], layer_input(ref, s, layer)
            if got.shape != want.shape:
                failures.append(f"{name}: output shape {got.shape}, reference {want.shape}")
                continue
            if any(not math.isfinite(v) for v in got.values):
                failures.append(f"{name}: NaN or inf in the output")
                continue
            n_tok = want.shape[0]
            ties = near_ties(ref, s, layer, args.delta, args.group_delta) if is_moe else set()
            if args.mode == "chained" and ties:
                first = min(ties)
                cut[s] = first if cut[s] is None else min(cut[s], first)
            excluded = set(ties)
            if args.mode == "chained" and cut[s] is not None:
                excluded |= set(range(cut[s], n_tok))
            tokens += n_tok
            ties_total += len(ties)
            left_out += len(excluded)
            for t in range(n_tok):
                if t in excluded:
                    continue
                for g, w, i in zip(got.row(t), want.row(t), x.row(t)):
                    num += (g - w) ** 2
                    den += w * w
                    block_den += (w - i) ** 2
            if not is_moe:
                continue
            route_name = f"route.{s}.layer.{layer}"
            if route_name not in out:
                failures.append(f"layer {layer}: the output has no {route_name}")
                continue
            ref_route, out_route = ref[route_name], out[route_name]
            if out_route.shape != ref_route.shape:
                failures.append(f"{route_name}: output shape {out_route.shape}, "
                                f"reference {ref_route.shape}")
                continue
            for t in range(n_tok):
                same = sorted(out_route.row(t)) == sorted(ref_route.row(t))
                if t in excluded:
                    tie_compared += 1
                    tie_agree += same
                else:
                    compared += 1
                    agree += same
        rel = math.sqrt(num / den) if den > 0 else float("nan")
        block = math.sqrt(num / block_den) if block_den > 0 else float("nan")
        routes = f"{agree}/{compared}" if is_moe else "-"
        tie_routes = f"{tie_agree}/{tie_compared}" if is_moe else "-"
        print(f"{layer:>5} {'moe' if is_moe else 'dense':>5} {tokens:>6} {ties_total:>4} "
              f"{left_out:>8} {rel:>9.3e} {block:>12.3e} {routes:>12} {tie_routes:>16}")
        if den == 0:
            failures.append(f"layer {layer}: every token was left out")
        if args.max_rel_l2 is not None and not rel <= args.max_rel_l2:
            failures.append(f"layer {layer}: rel_l2 {rel:.3e} exceeds {args.max_rel_l2}")
        if args.max_block_rel_l2 is not None and not block <= args.max_block_rel_l2:
            failures.append(f"layer {layer}: block_rel_l2 {block:.3e} exceeds {args.max_block_rel_l2}")
        if is_moe and compared - agree > args.max_route_mismatch:
            failures.append(f"layer {layer}: {compared - agree} routes differ away from ties "
                            f"(at most {args.max_route_mismatch} allowed)")
    for f in failures:
        print("FAIL " + f)
    print("FAIL" if failures else "PASS")
    return 1 if failures else 0


# ---- input --------------------------------------------------------------------------------------

def make_input(args) -> int:
    ref = read_safetensors(args.reference)
    tensors = {}
    for s in sequences(ref):
        x = layer_input(ref, s, args.layer)
        tensors[f"hidden.{s}"] = ("BF16", x.shape, to_bf16_bits(x.values))
    write_safetensors(args.input, tensors)
    print(f"wrote {args.input}: the input of layer {args.layer} for {len(tensors)} sequences")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="compare an output with a reference")
    c.add_argument("reference")
    c.add_argument("output")
    c.add_argument("--layers", help="A:B (half-open) or N (0:N): compare only these layers")
    c.add_argument("--mode", choices=("isolated", "chained"), default="isolated",
                   help="isolated: each layer ran on the reference's input of that layer; "
                        "chained: the layers ran one after another from the first one's input")
    c.add_argument("--delta", type=float, default=2e-3,
                   help="route margins at or below this are near ties (default 2e-3)")
    c.add_argument("--group-delta", type=float,
                   help="the same for DeepSeek's group margin (default: --delta)")
    c.add_argument("--max-rel-l2", type=float, help="bound on each layer's rel_l2")
    c.add_argument("--max-block-rel-l2", type=float, help="bound on each layer's block_rel_l2")
    c.add_argument("--max-route-mismatch", type=int, default=0,
                   help="routes allowed to differ away from ties, per layer (default 0)")
    c.set_defaults(run=check)

    i = sub.add_parser("input", help="write the reference input of one layer as an --input file")
    i.add_argument("reference")
    i.add_argument("layer", type=int)
    i.add_argument("input")
    i.set_defaults(run=make_input)

    args = parser.parse_args()
    if getattr(args, "group_delta", 0) is None:
        args.group_delta = args.delta
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
