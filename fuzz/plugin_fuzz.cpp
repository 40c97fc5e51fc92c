// libFuzzer target: the plugin ABI's argument checks, through the C entry points a host calls. The
// input chooses the ABI version, the settings list (known and unknown names, any values), the
// pipeline: a preset's (create_pipeline: architecture, kind and preset, the tiny presets or
// arbitrary strings) or a layer of one of the tiny MXFP4 checkpoints (load_pipeline, or
// load_pipeline_tp with a communicator of any rank and size whose all-reduce succeeds or fails;
// the folder, layer, kind and load options: backend, max_tokens and KV cache kind, in and around
// their ranges), version 1's per-token run or version 2's per-sequence run, the batch shape, each
// buffer's element count and pointer (exact, short, NULL or aliasing another), the caches in the
// pipeline's cache kind, and every batch entry (query starts, positions, slots, block ids,
// context lengths, in and around their ranges). Each call must return a status of the ABI with a
// message naming what was wrong, or run; a crash, a sanitizer report, a failure without a message
// or an unknown status is a finding.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "atom/env/registry.hpp"
#include "atom/numeric/bf16.hpp"
#include "atom/plugin/atom_plugin.h"

namespace {

const atom_plugin_api* api = nullptr;

// A finding names the status and the message before it stops.
[[noreturn]] void finding(atom_plugin_status s, const char* why) {
  std::fprintf(stderr, "finding: %s (status %d, message \"%s\")\n", why, static_cast<int>(s),
               api->last_error());
  __builtin_trap();
}

void check(atom_plugin_status s) {
  if (s < ATOM_PLUGIN_OK || s > ATOM_PLUGIN_ERROR_COMMUNICATOR) finding(s, "an unknown status");
  // INTERNAL means a check let bad input through to code that then failed.
  if (s == ATOM_PLUGIN_ERROR_INTERNAL) finding(s, "an internal error");
  if (s != ATOM_PLUGIN_OK && std::strlen(api->last_error()) == 0) finding(s, "no message");
}

// Choices read from the input: 0, what an exhausted input reads, is always the common case.
std::string pick(FuzzedDataProvider& in, const std::vector<std::string>& known) {
  if (in.ConsumeIntegralInRange<int>(0, 7) == 7) return in.ConsumeRandomLengthString(24);
  return known[in.ConsumeIntegralInRange<std::size_t>(0, known.size() - 1)];
}

// A value near a range: mostly inside [lo, hi], sometimes just outside, rarely anything.
template <class T>
T around(FuzzedDataProvider& in, std::int64_t lo, std::int64_t hi) {
  switch (in.ConsumeIntegralInRange<int>(0, 15)) {
    case 13:
      return in.ConsumeIntegral<T>();
    case 14:
      return static_cast<T>(lo - 1);
    case 15:
      return static_cast<T>(hi + 1);
    default:
      return static_cast<T>(in.ConsumeIntegralInRange<std::int64_t>(lo, hi < lo ? lo : hi));
  }
}

// One run argument: its storage and the pointer and count the host passes.
template <class T>
struct Arg {
  std::vector<T> storage;
  T* data = nullptr;
  std::size_t count = 0;
};

// Exact, NULL, one short or a few long; the contents come from a generator seeded by the input
// (activations and caches hold thousands of elements): finite values of the element's type, or
// with `raw` any bits (NaN and infinity included; the pipelines must not crash on them). The
// batch entries are set by the caller.
template <class T>
Arg<T> make_arg(FuzzedDataProvider& in, std::size_t needed, std::minstd_rand& bits, bool raw) {
  Arg<T> a;
  std::size_t n = needed;
  switch (in.ConsumeIntegralInRange<int>(0, 15)) {
    case 13:
      return a;  // NULL, count 0
    case 14:
      n = needed > 0 ? needed - 1 : 0;
      break;
    case 15:
      n = needed + in.ConsumeIntegralInRange<std::size_t>(1, 8);
      break;
    default:
      break;
  }
  a.storage.resize(n > 0 ? n : 1);
  std::uniform_real_distribution<float> finite(-4.0f, 4.0f);
  for (auto& v : a.storage) {
    if (raw) {
      const auto word = static_cast<std::uint32_t>(bits());
      std::memcpy(&v, &word, sizeof(T) < sizeof(word) ? sizeof(T) : sizeof(word));
    } else if constexpr (std::is_same_v<T, float>) {
      v = 1e-3f + std::fabs(finite(bits));  // cache scales are positive
    } else if constexpr (std::is_same_v<T, std::uint16_t>) {
      v = atom::to_bf16(finite(bits)).bits;
    } else if constexpr (std::is_same_v<T, std::uint8_t>) {
      v = static_cast<std::uint8_t>(bits()) & 0x7E;  // an FP8 e4m3 code that is not NaN
    } else {
      v = static_cast<T>(bits());
    }
  }
  a.data = a.storage.data();
  a.count = n;
  return a;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  {
    // The entry point: any version; versions 1 to 4 are handed out, the rest refused. Runs use
    // this header's table (the earlier versions' functions are its first ones).
    const atom_plugin_api* got = nullptr;
    const char* error = nullptr;
    const auto version = in.ConsumeIntegralInRange<int>(0, 7) < 7 ? ATOM_PLUGIN_ABI_VERSION
                                                                  : in.ConsumeIntegral<uint32_t>();
    const atom_plugin_status s = atom_plugin_get_api(version, &got, &error);
    if ((s == ATOM_PLUGIN_OK) != (version >= 1 && version <= ATOM_PLUGIN_ABI_VERSION))
      __builtin_trap();
    if (s == ATOM_PLUGIN_OK && got->abi_version != version) __builtin_trap();
    if (s != ATOM_PLUGIN_OK && (error == nullptr || std::strlen(error) == 0)) __builtin_trap();
    if (s != ATOM_PLUGIN_OK) return 0;
    if (atom_plugin_get_api(ATOM_PLUGIN_ABI_VERSION, &api, &error) != ATOM_PLUGIN_OK)
      __builtin_trap();
  }

  // Settings: name/value pairs of registry names or arbitrary strings, the value arbitrary.
  std::vector<std::string> names;
  for (const auto& spec : atom::env::registry) names.emplace_back(spec.name);
  std::vector<std::string> texts;
  const int pairs = in.ConsumeIntegralInRange<int>(0, 4);
  for (int i = 0; i < pairs; ++i) {
    texts.push_back(pick(in, names));
    texts.push_back(in.ConsumeBool() ? std::string(in.ConsumeBool() ? "1" : "0")
                                     : in.ConsumeRandomLengthString(12));
  }
  std::vector<const char*> settings;
  for (const auto& t : texts) settings.push_back(t.c_str());
  if (!settings.empty() && in.ConsumeIntegralInRange<int>(0, 15) == 15) settings.pop_back();
  settings.push_back(nullptr);
  atom_plugin_registration* reg = nullptr;
  atom_plugin_status s = api->register_plugin(settings.data(), &reg);
  check(s);
  if (s != ATOM_PLUGIN_OK) return 0;

  atom_plugin_registration_info info{};
  check(api->registration_info(reg, &info));
  std::vector<std::string> architectures;
  for (std::size_t i = 0; i < info.model_count; ++i) {
    atom_plugin_model m{};
    check(api->model(reg, i, &m));
    architectures.emplace_back(m.architecture);
  }
  atom_plugin_model m{};
  check(api->model(reg, in.ConsumeIntegralInRange<std::size_t>(0, info.model_count + 1), &m));
  if (architectures.empty()) architectures.emplace_back("DeepseekV3ForCausalLM");

  const std::string kind = pick(in, {"layer", "attention", "moe"});
  atom_plugin_pipeline* p = nullptr;
  const int source = in.ConsumeIntegralInRange<int>(0, 2);
  if (source == 0) {
    // Only the tiny presets: the full-size ones generate gigabytes of weights.
    const std::string architecture = pick(in, architectures);
    const std::string preset = pick(in, {"deepseek-v3-tiny", "qwen3-30b-a3b-tiny"});
    s = api->create_pipeline(reg, architecture.c_str(), kind.c_str(), preset.c_str(),
                             in.ConsumeIntegralInRange<std::uint64_t>(0, 3), &p);
  } else {
    // A checkpoint folder (or the folder above them, which holds no config.json), any layer of
    // its three and around them, load options NULL or of the input's choosing.
    const std::string root = ATOM_FUZZ_HF_DATA;
    const std::string checkpoint =
        pick(in, {root + "/qwen3-30b-a3b-tiny/mxfp4", root + "/deepseek-v3-tiny/mxfp4", root});
    const auto layer = around<std::int64_t>(in, 0, 2);
    const std::string backend = pick(in, {"host", "auto", "gpu"});
    atom_plugin_load_options options{in.ConsumeBool() ? backend.c_str() : nullptr,
                                     around<std::int64_t>(in, 1, 16),
                                     around<atom_plugin_cache_kind>(in, 0, 4)};
    const atom_plugin_load_options* o =
        in.ConsumeIntegralInRange<int>(0, 7) == 7 ? nullptr : &options;
    if (source == 1) {
      s = api->load_pipeline(reg, checkpoint.c_str(), layer, kind.c_str(), o, &p);
    } else {
      // The others' shares are zero (the identity), or the all-reduce fails.
      static constexpr auto identity = [](void*, const std::uint16_t* x, std::uint16_t* out,
                                          std::uint64_t count, void*) -> std::int32_t {
        std::memmove(out, x, count * sizeof(std::uint16_t));
        return 0;
      };
      static constexpr auto failing = [](void*, const std::uint16_t*, std::uint16_t*, std::uint64_t,
                                         void*) -> std::int32_t { return 1; };
      const auto size = around<std::int32_t>(in, 1, 4);
      const int reduce = in.ConsumeIntegralInRange<int>(0, 15);
      const atom_plugin_communicator c{around<std::int32_t>(in, 0, size - 1), size, nullptr,
                                       reduce == 15   ? nullptr
                                       : reduce == 14 ? +failing
                                                      : +identity};
      s = api->load_pipeline_tp(reg, checkpoint.c_str(), layer, kind.c_str(), o,
                                in.ConsumeIntegralInRange<int>(0, 15) == 15 ? nullptr : &c, &p);
    }
  }
  check(s);
  api->release_registration(reg);
  if (s != ATOM_PLUGIN_OK) return 0;
  atom_plugin_pipeline_info pi{};
  check(api->pipeline_info(p, &pi));

  // Version 1's per-token batch, or version 2's per-sequence one.
  const bool per_sequence = in.ConsumeBool();
  atom_plugin_sequence_shape shape{around<std::int64_t>(in, 1, 6), around<std::int64_t>(in, 1, 4),
                                   around<std::int64_t>(in, 1, 5), around<std::int64_t>(in, 1, 24)};
  atom_plugin_sequence_sizes n{};
  if (per_sequence) {
    s = api->sequence_sizes(p, &shape, &n);
  } else {
    const atom_plugin_batch_shape v1{shape.tokens, shape.max_blocks_per_sequence, shape.num_blocks};
    atom_plugin_buffer_sizes z{};
    s = api->buffer_sizes(p, &v1, &z);
    n = {z.x,           z.residual,  z.out,        0,           z.context_lens,
         z.block_table, z.positions, z.slots,      z.mla_cache, z.key_cache,
         z.value_cache, z.key_scale, z.value_scale};
  }
  check(s);
  if (s != ATOM_PLUGIN_OK) {
    api->destroy_pipeline(p);
    return 0;
  }
  // The sizes accept any extent up to the ABI's limits; the fuzzer allocates small batches.
  const std::size_t total = n.x + n.block_table + n.mla_cache + n.key_cache + n.key_scale;
  if (total > (std::size_t{1} << 22)) {
    api->destroy_pipeline(p);
    return 0;
  }

  std::minstd_rand bits(in.ConsumeIntegral<std::uint32_t>() | 1u);
  const bool raw = in.ConsumeIntegralInRange<int>(0, 7) == 7;
  auto x = make_arg<std::uint16_t>(in, n.x, bits, raw);
  auto residual = make_arg<std::uint16_t>(in, n.residual, bits, raw);
  auto out = make_arg<std::uint16_t>(in, n.out, bits, raw);
  auto starts = make_arg<std::int32_t>(in, n.query_start, bits, raw);
  auto positions = make_arg<std::int64_t>(in, n.positions, bits, raw);
  auto slots = make_arg<std::int64_t>(in, n.slots, bits, raw);
  auto table = make_arg<std::int32_t>(in, n.block_table, bits, raw);
  auto context = make_arg<std::int32_t>(in, n.context_lens, bits, raw);
  auto mla = make_arg<std::uint16_t>(in, n.mla_cache, bits, raw);
  // The GQA caches in the pipeline's kind: bf16 values or FP8 codes (the moved storage keeps
  // its buffer, so `data` stays valid).
  struct Cache {
    Arg<std::uint16_t> bf16;
    Arg<std::uint8_t> fp8;
    void* data = nullptr;
    std::size_t count = 0;
  };
  const auto cache_arg = [&](std::size_t needed) {
    Cache c;
    if (pi.cache_kind == ATOM_PLUGIN_CACHE_KV_BF16) {
      c.bf16 = make_arg<std::uint16_t>(in, needed, bits, raw);
      c.data = c.bf16.data;
      c.count = c.bf16.count;
    } else {
      c.fp8 = make_arg<std::uint8_t>(in, needed, bits, raw);
      c.data = c.fp8.data;
      c.count = c.fp8.count;
    }
    return c;
  };
  const Cache key = cache_arg(n.key_cache);
  const Cache value = cache_arg(n.value_cache);
  auto key_scale = make_arg<float>(in, n.key_scale, bits, raw);
  auto value_scale = make_arg<float>(in, n.value_scale, bits, raw);
  // The moe kind ignores the cache extents, which may then be anything: ranges from clamped ones.
  const std::int64_t blocks = std::clamp<std::int64_t>(shape.num_blocks, 0, 1 << 20);
  const std::int64_t width = std::clamp<std::int64_t>(shape.max_blocks_per_sequence, 0, 1 << 20);
  const std::int64_t tokens = std::clamp<std::int64_t>(shape.tokens, 0, 1 << 20);
  const std::int64_t slots_total = blocks * pi.block_size;
  for (auto& v : positions.storage) v = around<std::int64_t>(in, 0, pi.max_position - 1);
  // Slots: distinct by default (token t writes slot t), else padding or anything near the range.
  for (std::size_t t = 0; t < slots.storage.size(); ++t) {
    const int choice = in.ConsumeIntegralInRange<int>(0, 7);
    slots.storage[t] = choice == 7   ? -1
                       : choice == 6 ? around<std::int64_t>(in, 0, slots_total - 1)
                                     : static_cast<std::int64_t>(t);
  }
  // Query starts: 0, then steps of 0 to 3 tokens, each near the range of a valid next start.
  for (std::size_t i = 0; i < starts.storage.size(); ++i) {
    const std::int32_t previous = i == 0 ? 0 : starts.storage[i - 1];
    starts.storage[i] =
        i == 0 ? around<std::int32_t>(in, 0, 0)
               : around<std::int32_t>(in, previous,
                                      std::min<std::int64_t>(std::int64_t{previous} + 3, tokens));
  }
  for (auto& v : table.storage) v = around<std::int32_t>(in, 0, blocks - 1);
  for (auto& v : context.storage) v = around<std::int32_t>(in, 1, width * pi.block_size);

  // Aliasing: the output over the residual stream, or the input over the output.
  const int alias = in.ConsumeIntegralInRange<int>(0, 15);
  auto aliased = [&](auto& a) {
    if (alias == 14) {
      a.out = a.residual;
      a.out_count = a.residual_count;
    } else if (alias == 15) {
      a.x = a.out;
      a.x_count = a.out_count;
    }
  };
  if (per_sequence) {
    atom_plugin_sequence_args a{shape,           x.data,           x.count,          residual.data,
                                residual.count,  out.data,         out.count,        starts.data,
                                starts.count,    context.data,     context.count,    table.data,
                                table.count,     positions.data,   positions.count,  slots.data,
                                slots.count,     mla.data,         mla.count,        key.data,
                                key.count,       value.data,       value.count,      key_scale.data,
                                key_scale.count, value_scale.data, value_scale.count};
    aliased(a);
    check(api->run_sequences(p, &a, nullptr));
  } else {
    atom_plugin_run_args a{{shape.tokens, shape.max_blocks_per_sequence, shape.num_blocks},
                           x.data,
                           x.count,
                           residual.data,
                           residual.count,
                           out.data,
                           out.count,
                           positions.data,
                           positions.count,
                           slots.data,
                           slots.count,
                           table.data,
                           table.count,
                           context.data,
                           context.count,
                           mla.data,
                           mla.count,
                           key.data,
                           key.count,
                           value.data,
                           value.count,
                           key_scale.data,
                           key_scale.count,
                           value_scale.data,
                           value_scale.count};
    aliased(a);
    check(api->run(p, &a, nullptr));
  }
  api->destroy_pipeline(p);
  return 0;
}
