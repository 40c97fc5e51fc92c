// libFuzzer target: arbitrary bytes as a checkpoint's config.json. Anything but a model config
// (whose every decoder layer has a kind) or a ConfigError naming the file is a finding.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "atom/model/hf_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto m = atom::model::parse_hf_config(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.json");
    for (atom::index_t l = 0; l < std::min<atom::index_t>(m.num_layers, 256); ++l)
      (void)atom::pipeline::layer_kind(m, l);
    if (m.attention == atom::pipeline::AttentionKind::mla)
      (void)atom::pipeline::mla_softmax_scale(m);
  } catch (const atom::model::ConfigError&) {
  }
  return 0;
}
