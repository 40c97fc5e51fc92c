// The formats of the GQA paged key/value cache. One definition, shared by the ops (which take a
// cache of one format), the kernels and the policy axis over them (policy::kv_cache_format, set
// from the cache a run is given, as the weight format is set from the weights).
#pragma once

#include <cstdint>

namespace atom::ops {

// fp8_row:    FP8 e4m3 codes with one float scale per (token, kv head) row, scale = amax / 448
//             (atom's own format: every row uses the whole FP8 range).
// fp8_tensor: FP8 e4m3 codes with one float scale per tensor, one for the keys and one for the
//             values of a layer (the k_scale / v_scale of vLLM's and SGLang's FP8 caches): a row
//             is stored as to_fp8(x / scale), rounded to nearest even and saturated to +-448.
// bf16:       bf16 values, no scale (the engines' default cache).
enum class KvCacheFormat : std::uint8_t { fp8_row, fp8_tensor, bf16 };

}  // namespace atom::ops
