#!/usr/bin/env python3
"""Reference numbers for tests/model/rope_test.cpp, from the math module only.

Re-implements, line by line, transformers 5's `_compute_default_rope_parameters` /
`_compute_yarn_parameters` (modeling_rope_utils.py), its rotary embedding's forward
(cos = cos(p * inv_freq) * attention_scaling, the same for sin) and DeepseekV3Attention's softmax
scale (qk_head_dim ** -0.5 times yarn_get_mscale(factor, mscale_all_dim) ** 2 when the rope is
scaled and mscale_all_dim is set). transformers evaluates inv_freq and the angles in float32;
these are the same formulas in float64, which is what atom computes before rounding to float.

Run: python3 tests/model/data/rope_reference.py  (prints the C++ tables the test holds)
"""
import math


def get_mscale(scale, mscale=1.0):
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn(dim, base, factor, original_max, beta_fast=None, beta_slow=None, mscale=None,
         mscale_all_dim=None, attention_factor=None, truncate=True):
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)
    beta_fast = beta_fast or 32
    beta_slow = beta_slow or 1

    def find_correction_dim(num_rotations):
        return (dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low = find_correction_dim(beta_fast)
    high = find_correction_dim(beta_slow)
    if truncate:
        low = math.floor(low)
        high = math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    inv_freq = []
    for i in range(dim // 2):
        pos_freq = base ** (2 * i / dim)
        extrapolation = 1.0 / pos_freq
        interpolation = 1.0 / (factor * pos_freq)
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        extrapolation_factor = 1.0 - ramp
        inv_freq.append(interpolation * (1 - extrapolation_factor)
                        + extrapolation * extrapolation_factor)
    return inv_freq, attention_factor


def cos_sin(inv_freq, attention_factor, position, i):
    angle = position * inv_freq[i]
    return math.cos(angle) * attention_factor, math.sin(angle) * attention_factor


def mla_softmax_scale(qk_head_dim, scaled, factor=1.0, mscale_all_dim=0.0):
    scale = qk_head_dim ** -0.5
    if scaled and mscale_all_dim:
        m = get_mscale(factor, mscale_all_dim)
        scale = scale * m * m
    return scale


# name, rot_dim, theta, yarn kwargs, positions, frequency indices
CASES = [
    # DeepSeek-V3's config.json.
    ("deepseek_v3", 64, 10000.0,
     dict(factor=40.0, original_max=4096, beta_fast=32, beta_slow=1, mscale=1.0,
          mscale_all_dim=1.0),
     [1, 7, 4095, 4097, 163839], [0, 5, 10, 11, 16, 22, 23, 31]),
    # No mscales (attention factor 0.1 ln 4 + 1), untruncated correction range, 24 dims.
    ("untruncated", 24, 1000000.0,
     dict(factor=4.0, original_max=32, beta_fast=8, beta_slow=2, truncate=False),
     [3, 33, 101, 127], [0, 1, 3, 5, 7, 11]),
    # mscale over mscale_all_dim != 1, rope dim of the tiny preset.
    ("mscale_ratio", 16, 10000.0,
     dict(factor=16.0, original_max=256, mscale=1.0, mscale_all_dim=0.5),
     [5, 255, 257, 4095], [0, 1, 2, 3, 5, 7]),
]


def main():
    for name, dim, theta, kw, positions, indices in CASES:
        inv_freq, af = yarn(dim, theta, **kw)
        print(f"// {name}: rot_dim {dim}, theta {theta}, {kw}")
        print(f"//   attention_factor = {af!r}")
        print(f"//   inv_freq = {{{', '.join(repr(v) for v in inv_freq)}}}")
        for p in positions:
            for i in indices:
                c, s = cos_sin(inv_freq, af, p, i)
                print(f"    {{{p}, {i}, {c!r}, {s!r}}},")
    print("// softmax scales")
    print(f"//   deepseek_v3 {mla_softmax_scale(192, True, 40.0, 1.0)!r}")
    print(f"//   tiny (qk 48, factor 16, mscale_all_dim 1) {mla_softmax_scale(48, True, 16.0, 1.0)!r}")
    print(f"//   mscale_all_dim 0.5, factor 16, qk 48 {mla_softmax_scale(48, True, 16.0, 0.5)!r}")
    print(f"//   unscaled qk 192 {mla_softmax_scale(192, False)!r}")


if __name__ == "__main__":
    main()
