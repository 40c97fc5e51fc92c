#include "atom/model/checkpoint.hpp"

#include <cstring>
#include <regex>
#include <string_view>
#include <vector>

#include "../pipeline/quantize_weights.hpp"
#include "atom/model/hf_config.hpp"
#include "atom/ops/rope.hpp"

namespace atom::model {

namespace {

using io::Dtype;
using io::LoadError;
using pipeline::ModelConfig;
using policy::WeightFormat;
using Buffers = std::vector<std::unique_ptr<std::byte[]>>;

template <class T, class... Extent>
View<T, static_cast<int>(sizeof...(Extent))> alloc(Buffers& buffers, Extent... extent) {
  index_t n = 1;
  ((n *= static_cast<index_t>(extent)), ...);
  buffers.push_back(std::make_unique<std::byte[]>(static_cast<std::size_t>(n) * sizeof(T)));
  return make_view(reinterpret_cast<T*>(buffers.back().get()), extent...);
}

std::string shape_text(const std::vector<std::uint64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string format_name(WeightFormat f) {
  return std::string(policy::weight_format.label(static_cast<std::uint8_t>(f)));
}

}  // namespace

// The open shards, each mapped or read once.
struct HfCheckpoint::Files {
  io::LoadMode mode;
  std::map<std::filesystem::path, io::SafetensorsFile> open;

  const io::SafetensorsFile& file(const std::filesystem::path& path) {
    auto it = open.find(path);
    if (it == open.end()) it = open.emplace(path, io::SafetensorsFile::open(path, mode)).first;
    return it->second;
  }
};

namespace {

// Reads one layer's tensors, checking each against what the model implies.
class LayerReader {
 public:
  LayerReader(const ModelConfig& m, const io::Checkpoint& c, HfCheckpoint::Files& files,
              index_t layer, Buffers& buffers)
      : m_(m),
        c_(c),
        files_(files),
        prefix_("model.layers." + std::to_string(layer) + "."),
        b_(buffers) {}

  // A tensor of the layer that must exist.
  const io::TensorInfo& info(const std::string& name) const {
    if (!c_.contains(name))
      throw LoadError(source(), name,
                      "is missing: layer " + prefix_.substr(13, prefix_.size() - 14) + " of " +
                          m_.name + " needs it");
    return c_.info(name);
  }
  std::string file_of(const std::string& name) const { return c_.shard_of(name).path.string(); }
  std::span<const std::byte> bytes(const std::string& name) const {
    return files_.file(c_.shard_of(name).path).bytes(info(name));
  }

  void expect(const std::string& name, std::initializer_list<Dtype> dtypes,
              const std::vector<std::uint64_t>& shape) const {
    const io::TensorInfo& t = info(name);
    bool dtype_ok = false;
    std::string wanted;
    for (Dtype d : dtypes) {
      dtype_ok = dtype_ok || t.dtype == d;
      wanted += (wanted.empty() ? "" : " or ") + std::string(io::dtype_name(d));
    }
    if (!dtype_ok)
      throw LoadError(file_of(name), name,
                      "has dtype " + std::string(io::dtype_name(t.dtype)) + ", expected " + wanted);
    if (t.shape != shape)
      throw LoadError(file_of(name), name,
                      "has shape " + shape_text(t.shape) + ", expected " + shape_text(shape) +
                          " from config.json");
  }

  // A vector [n] (norm weight) as bf16.
  View1<const bf16> norm(const std::string& module) {
    const std::string name = prefix_ + module + ".weight";
    expect(name, {Dtype::BF16}, {static_cast<std::uint64_t>(m_.hidden)});
    return copy_bf16(name, m_.hidden);
  }
  View1<const bf16> norm(const std::string& module, index_t n) {
    const std::string name = prefix_ + module + ".weight";
    expect(name, {Dtype::BF16}, {static_cast<std::uint64_t>(n)});
    return copy_bf16(name, n);
  }
  View1<bf16> copy_bf16(const std::string& name, index_t n) {
    auto v = alloc<bf16>(b_, n);
    std::memcpy(v.data, bytes(name).data(), static_cast<std::size_t>(n) * sizeof(bf16));
    return v;
  }

  // The stored format of linear module `module` ("self_attn.q_a_proj"), checked against the
  // config's quantization_config.
  WeightFormat format_of(const std::string& module) const {
    const std::string name = prefix_ + module + ".weight";
    const io::TensorInfo& t = info(name);
    WeightFormat f;
    if (t.dtype == Dtype::BF16)
      f = WeightFormat::bf16;
    else if (t.dtype == Dtype::F8_E4M3)
      f = WeightFormat::fp8_block;
    else if (t.dtype == Dtype::U8)
      f = WeightFormat::mxfp4;
    else
      throw LoadError(file_of(name), name,
                      "has dtype " + std::string(io::dtype_name(t.dtype)) +
                          ", expected BF16, F8_E4M3 (FP8 block scales) or U8 (MXFP4 codes)");
    const WeightFormat want = configured_format(prefix_ + module);
    if (f != want)
      throw LoadError(file_of(name), name,
                      "is stored as " + format_name(f) + " (" +
                          std::string(io::dtype_name(t.dtype)) +
                          ") but config.json's "
                          "quantization_config gives this module " +
                          format_name(want));
    return f;
  }

  // What the config's quantization_config makes of a module: its quantized format, or bf16 when
  // it has none or the module is excluded (quark's exclude, names or "re:" patterns matching the
  // whole name; fp8's modules_to_not_convert, names contained in the module's name).
  WeightFormat configured_format(const std::string& module) const {
    using pipeline::QuantMethod;
    if (m_.quant.method == QuantMethod::none) return WeightFormat::bf16;
    for (const auto& p : m_.quant.unquantized) {
      const bool hit = p.regex ? std::regex_match(module, std::regex(p.text))
                       : m_.quant.method == QuantMethod::fp8_block
                           ? module.find(p.text) != std::string::npos
                           : module == p.text;
      if (hit) return WeightFormat::bf16;
    }
    return m_.quant.method == QuantMethod::fp8_block ? WeightFormat::fp8_block
                                                     : WeightFormat::mxfp4;
  }

  // Linear modules stacked along N into one weight [sum of rows, k], in their common format.
  pipeline::LinearWeight linear(const std::vector<std::pair<std::string, index_t>>& parts,
                                index_t k) {
    const WeightFormat f = common_format(parts);
    index_t n = 0;
    for (const auto& [module, rows] : parts) n += rows;
    pipeline::LinearWeight w;
    w.format = f;
    Rows out = rows_of(f, 1, n, k);
    index_t at = 0;
    for (const auto& [module, rows] : parts) {
      read_rows(prefix_ + module, f, rows, k, out, 0, at, n);
      at += rows;
    }
    w.bf16.w = make_view(out.bf16_values, n, k);
    w.mxfp4 = {make_view(out.codes, n, ops::mxfp4_packed_cols(k)),
               make_view(out.scales, n, ops::mxfp4_scale_cols(k)), k};
    w.fp8 = {make_view(out.fp8, n, k), make_view(out.fp8_scale, out.scale_rows, fp8_cols(k)),
             out.block_n};
    if (f != WeightFormat::bf16) w.bf16 = {};
    if (f != WeightFormat::mxfp4) w.mxfp4 = {};
    if (f != WeightFormat::fp8_block) w.fp8 = {};
    return w;
  }

  // Experts E of `suffix` modules stacked along N: [E, sum of rows, k].
  pipeline::ExpertWeights experts(const std::vector<std::pair<std::string, index_t>>& parts,
                                  index_t k) {
    const index_t e_count = m_.num_experts;
    std::vector<std::pair<std::string, index_t>> first;
    for (const auto& [module, rows] : parts) first.emplace_back("mlp.experts.0." + module, rows);
    const WeightFormat f = common_format(first);
    index_t n = 0;
    for (const auto& [module, rows] : parts) n += rows;
    Rows out = rows_of(f, e_count, n, k);
    for (index_t e = 0; e < e_count; ++e) {
      index_t at = 0;
      for (const auto& [module, rows] : parts) {
        const std::string name = "mlp.experts." + std::to_string(e) + "." + module;
        if (format_of(name) != f)
          throw LoadError(
              file_of(prefix_ + name + ".weight"), prefix_ + name + ".weight",
              "is " + format_name(format_of(name)) + " but expert 0's is " + format_name(f));
        read_rows(prefix_ + name, f, rows, k, out, e, at, n);
        at += rows;
      }
    }
    pipeline::ExpertWeights w;
    w.format = f;
    if (f == WeightFormat::bf16) w.bf16.w = make_view(out.bf16_values, e_count, n, k);
    if (f == WeightFormat::mxfp4)
      w.mxfp4 = {make_view(out.codes, e_count, n, ops::mxfp4_packed_cols(k)),
                 make_view(out.scales, e_count, n, ops::mxfp4_scale_cols(k)), k};
    if (f == WeightFormat::fp8_block)
      w.fp8 = {make_view(out.fp8, e_count, n, k),
               make_view(out.fp8_scale, e_count, out.scale_rows, fp8_cols(k)), out.block_n};
    return w;
  }

  // kv_b_proj [heads * (nope + v), kv_lora] at its exact values, as floats.
  std::vector<float> dense_values(const std::string& module, index_t n, index_t k) {
    const WeightFormat f = format_of(module);
    fp8_block_n_ = m_.quant.block_n > 0 ? m_.quant.block_n : 128;
    Rows out = rows_of(f, 1, n, k);
    read_rows(prefix_ + module, f, n, k, out, 0, 0, n);
    std::vector<float> v(static_cast<std::size_t>(n * k));
    for (index_t r = 0; r < n; ++r)
      for (index_t c = 0; c < k; ++c) {
        float x = 0;
        if (f == WeightFormat::bf16) {
          x = to_float(out.bf16_values[r * k + c]);
        } else if (f == WeightFormat::fp8_block) {
          x = to_float(out.fp8[r * k + c]) *
              out.fp8_scale[(r / out.block_n) * fp8_cols(k) + c / ops::fp8_weight_block_k];
        } else {
          const std::uint8_t byte = out.codes[r * ops::mxfp4_packed_cols(k) + c / 2];
          x = e2m1_to_float(static_cast<std::uint8_t>(c % 2 ? byte >> 4 : byte & 0xf)) *
              to_float(out.scales[r * ops::mxfp4_scale_cols(k) + c / mx_block]);
        }
        v[static_cast<std::size_t>(r * k + c)] = x;
      }
    return v;
  }

  const std::string& prefix() const { return prefix_; }
  Buffers& buffers() { return b_; }

 private:
  static index_t fp8_cols(index_t k) { return ops::ceil_div(k, ops::fp8_weight_block_k); }

  // The destination of stacked rows, in one format; E stacks of n rows.
  struct Rows {
    bf16* bf16_values = nullptr;
    std::uint8_t* codes = nullptr;
    e8m0* scales = nullptr;
    fp8_e4m3* fp8 = nullptr;
    float* fp8_scale = nullptr;
    index_t block_n = 128;
    index_t scale_rows = 0;  // per stack
    std::vector<index_t> part_rows;
  };

  WeightFormat common_format(const std::vector<std::pair<std::string, index_t>>& parts) {
    const WeightFormat f = format_of(parts.front().first);
    for (const auto& [module, rows] : parts)
      if (format_of(module) != f)
        throw LoadError(file_of(prefix_ + module + ".weight"), prefix_ + module + ".weight",
                        "is " + format_name(format_of(module)) + " but " + prefix_ +
                            parts.front().first + ".weight, which atom fuses with it, is " +
                            format_name(f));
    // FP8: the block grid survives the stacking when every part but the last fills whole
    // 128-row blocks; otherwise scales are kept per row.
    fp8_block_n_ = m_.quant.block_n > 0 ? m_.quant.block_n : 128;
    for (std::size_t i = 0; i + 1 < parts.size(); ++i)
      if (parts[i].second % fp8_block_n_ != 0) fp8_block_n_ = 1;
    return f;
  }

  Rows rows_of(WeightFormat f, index_t stacks, index_t n, index_t k) {
    Rows r;
    switch (f) {
      case WeightFormat::bf16:
        r.bf16_values = alloc<bf16>(b_, stacks * n * k).data;
        break;
      case WeightFormat::mxfp4:
        r.codes = alloc<std::uint8_t>(b_, stacks * n * ops::mxfp4_packed_cols(k)).data;
        r.scales = alloc<e8m0>(b_, stacks * n * ops::mxfp4_scale_cols(k)).data;
        break;
      case WeightFormat::fp8_block:
        r.block_n = fp8_block_n_;
        r.scale_rows = ops::ceil_div(n, r.block_n);
        r.fp8 = alloc<fp8_e4m3>(b_, stacks * n * k).data;
        r.fp8_scale = alloc<float>(b_, stacks * r.scale_rows * fp8_cols(k)).data;
        break;
    }
    return r;
  }

  // Reads `rows` rows of `module` (its weight, and its scales) into stack `stack` at row `at`.
  void read_rows(const std::string& module, WeightFormat f, index_t rows, index_t k, Rows& out,
                 index_t stack, index_t at, index_t n) {
    const std::string w = module + ".weight";
    const auto u = [](index_t v) { return static_cast<std::uint64_t>(v); };
    switch (f) {
      case WeightFormat::bf16: {
        expect(w, {Dtype::BF16}, {u(rows), u(k)});
        std::memcpy(out.bf16_values + (stack * n + at) * k, bytes(w).data(),
                    static_cast<std::size_t>(rows * k) * sizeof(bf16));
        break;
      }
      case WeightFormat::mxfp4: {
        if (k % 2 != 0)
          throw LoadError(file_of(w), w, "has K = " + std::to_string(k) + "; MXFP4 needs even K");
        const std::string s = module + ".weight_scale";
        expect(w, {Dtype::U8}, {u(rows), u(k / 2)});
        expect(s, {Dtype::U8, Dtype::F8_E8M0}, {u(rows), u(ops::mxfp4_scale_cols(k))});
        std::memcpy(out.codes + (stack * n + at) * (k / 2), bytes(w).data(),
                    static_cast<std::size_t>(rows * (k / 2)));
        std::memcpy(out.scales + (stack * n + at) * ops::mxfp4_scale_cols(k), bytes(s).data(),
                    static_cast<std::size_t>(rows * ops::mxfp4_scale_cols(k)));
        break;
      }
      case WeightFormat::fp8_block: {
        const index_t bn = m_.quant.block_n > 0 ? m_.quant.block_n : 128;
        const std::string s = module + ".weight_scale_inv";
        expect(w, {Dtype::F8_E4M3}, {u(rows), u(k)});
        expect(s, {Dtype::F32, Dtype::BF16}, {u(ops::ceil_div(rows, bn)), u(fp8_cols(k))});
        std::memcpy(out.fp8 + (stack * n + at) * k, bytes(w).data(),
                    static_cast<std::size_t>(rows * k));
        const auto scale_bytes = bytes(s);
        const bool f32 = info(s).dtype == Dtype::F32;
        const auto scale_at = [&](index_t i) {
          if (f32) {
            float v;
            std::memcpy(&v, scale_bytes.data() + i * 4, 4);
            return v;
          }
          bf16 v;
          std::memcpy(&v, scale_bytes.data() + i * 2, 2);
          return to_float(v);
        };
        const index_t cols = fp8_cols(k);
        float* dst = out.fp8_scale + stack * out.scale_rows * cols;
        if (out.block_n == 1) {
          for (index_t r = 0; r < rows; ++r)
            for (index_t c = 0; c < cols; ++c)
              dst[(at + r) * cols + c] = scale_at((r / bn) * cols + c);
        } else {
          for (index_t r = 0; r < ops::ceil_div(rows, bn); ++r)
            for (index_t c = 0; c < cols; ++c)
              dst[(at / bn + r) * cols + c] = scale_at(r * cols + c);
        }
        break;
      }
    }
  }

  std::string source() const {
    return c_.shards().empty() ? std::string() : c_.shards().front().path.parent_path().string();
  }

  const ModelConfig& m_;
  const io::Checkpoint& c_;
  HfCheckpoint::Files& files_;
  std::string prefix_;
  Buffers& b_;
  index_t fp8_block_n_ = 128;
};

View2<const float> rope_table(Buffers& b, const ModelConfig& m, index_t rot_dim) {
  const auto table = ops::make_cos_sin_cache(m.max_position, rot_dim, m.rope_theta, m.rope_scaling);
  auto v = alloc<float>(b, m.max_position, rot_dim);
  std::copy(table.begin(), table.end(), v.data);
  return v;
}

void read_mla(LayerReader& r, const ModelConfig& m, pipeline::MlaWeights& w) {
  const index_t heads = m.num_heads;
  const index_t nope = m.qk_nope_dim;
  const index_t v_dim = m.v_head_dim;
  const index_t lora = m.kv_lora_rank;
  Buffers& b = r.buffers();
  w.input_norm = r.norm("input_layernorm");
  w.qkv_a = r.linear({{"self_attn.q_a_proj", m.q_lora_rank},
                      {"self_attn.kv_a_proj_with_mqa", m.kv_lora_rank + m.qk_rope_dim}},
                     m.hidden);
  w.q_a_norm = r.norm("self_attn.q_a_layernorm", m.q_lora_rank);
  w.kv_a_norm = r.norm("self_attn.kv_a_layernorm", m.kv_lora_rank);
  w.q_b = r.linear({{"self_attn.q_b_proj", heads * (nope + m.qk_rope_dim)}}, m.q_lora_rank);
  w.o_proj = r.linear({{"self_attn.o_proj", m.hidden}}, heads * v_dim);
  // kv_b_proj rows per head: nope rows of W_UK^T, then v rows of W_UV.
  const std::vector<float> kv_b =
      r.dense_values("self_attn.kv_b_proj", heads * (nope + v_dim), lora);
  std::vector<float> uk(static_cast<std::size_t>(heads * lora * nope));
  std::vector<float> uv(static_cast<std::size_t>(heads * v_dim * lora));
  for (index_t h = 0; h < heads; ++h) {
    const float* head = kv_b.data() + h * (nope + v_dim) * lora;
    for (index_t n = 0; n < nope; ++n)
      for (index_t c = 0; c < lora; ++c)
        uk[static_cast<std::size_t>((h * lora + c) * nope + n)] = head[n * lora + c];
    std::copy_n(head + nope * lora, v_dim * lora, uv.data() + h * v_dim * lora);
  }
  const auto fp8_heads = [&](const std::vector<float>& x, index_t n, index_t k) {
    ops::Fp8HeadWeight f{alloc<fp8_e4m3>(b, heads, n, k), alloc<float>(b, heads)};
    for (index_t h = 0; h < heads; ++h)
      f.scale(h) =
          pipeline::detail::quantize_fp8_matrix(x.data() + h * n * k, n * k, f.w.data + h * n * k);
    return f;
  };
  const auto mxfp4_heads = [&](const std::vector<float>& x, index_t n, index_t k) {
    ops::Mxfp4HeadWeight f{alloc<std::uint8_t>(b, heads, n, ops::mxfp4_packed_cols(k)),
                           alloc<e8m0>(b, heads, n, ops::mxfp4_scale_cols(k)), k};
    pipeline::detail::quantize_mxfp4_rows(x.data(), heads * n, k, f.packed.data, f.scale.data);
    return f;
  };
  w.w_uk_fp8 = fp8_heads(uk, lora, nope);
  w.w_uv_fp8 = fp8_heads(uv, v_dim, lora);
  w.w_uk_mxfp4 = mxfp4_heads(uk, lora, nope);
  w.w_uv_mxfp4 = mxfp4_heads(uv, v_dim, lora);
  w.cos_sin = rope_table(b, m, m.qk_rope_dim);
}

void read_qwen3(LayerReader& r, const ModelConfig& m, pipeline::Qwen3AttentionWeights& w) {
  const index_t hd = m.head_dim;
  w.input_norm = r.norm("input_layernorm");
  w.qkv = r.linear({{"self_attn.q_proj", m.num_heads * hd},
                    {"self_attn.k_proj", m.num_kv_heads * hd},
                    {"self_attn.v_proj", m.num_kv_heads * hd}},
                   m.hidden);
  w.q_norm = r.norm("self_attn.q_norm", hd);
  w.k_norm = r.norm("self_attn.k_norm", hd);
  w.o_proj = r.linear({{"self_attn.o_proj", m.hidden}}, m.num_heads * hd);
  w.cos_sin = rope_table(r.buffers(), m, hd);
}

void read_moe(LayerReader& r, const ModelConfig& m, pipeline::MoeWeights& w) {
  Buffers& b = r.buffers();
  const auto u = [](index_t v) { return static_cast<std::uint64_t>(v); };
  w.post_norm = r.norm("post_attention_layernorm");
  const std::string gate = r.prefix() + "mlp.gate.weight";
  r.expect(gate, {Dtype::BF16}, {u(m.num_experts), u(m.hidden)});
  auto router = alloc<bf16>(b, m.num_experts, m.hidden);
  std::memcpy(router.data, r.bytes(gate).data(), static_cast<std::size_t>(router.numel()) * 2);
  w.router = router;
  if (m.router == pipeline::RouterKind::sigmoid_grouped) {
    const std::string bias = r.prefix() + "mlp.gate.e_score_correction_bias";
    r.expect(bias, {Dtype::F32, Dtype::BF16}, {u(m.num_experts)});
    auto v = alloc<float>(b, m.num_experts);
    const auto bytes = r.bytes(bias);
    const bool f32 = r.info(bias).dtype == Dtype::F32;
    for (index_t e = 0; e < m.num_experts; ++e) {
      if (f32) {
        std::memcpy(&v(e), bytes.data() + e * 4, 4);
      } else {
        bf16 x;
        std::memcpy(&x, bytes.data() + e * 2, 2);
        v(e) = to_float(x);
      }
    }
    w.router_bias = v;
  }
  const index_t inter = m.moe_intermediate;
  w.gate_up = r.experts({{"gate_proj", inter}, {"up_proj", inter}}, m.hidden);
  w.down = r.experts({{"down_proj", m.hidden}}, inter);
  if (m.num_shared_experts > 0) {
    const index_t shared = m.num_shared_experts * inter;
    w.shared_gate_up =
        r.linear({{"mlp.shared_experts.gate_proj", shared}, {"mlp.shared_experts.up_proj", shared}},
                 m.hidden);
    w.shared_down = r.linear({{"mlp.shared_experts.down_proj", m.hidden}}, shared);
  } else {
    w.shared_gate_up.format = w.shared_down.format = w.gate_up.format;
  }
}

void read_dense(LayerReader& r, const ModelConfig& m, pipeline::DenseMlpWeights& w) {
  w.post_norm = r.norm("post_attention_layernorm");
  w.gate_up =
      r.linear({{"mlp.gate_proj", m.intermediate}, {"mlp.up_proj", m.intermediate}}, m.hidden);
  w.down = r.linear({{"mlp.down_proj", m.hidden}}, m.intermediate);
}

}  // namespace

HfCheckpoint HfCheckpoint::open(const std::filesystem::path& dir, io::LoadMode mode) {
  HfCheckpoint c;
  c.dir_ = dir;
  c.mode_ = mode;
  c.model_ = load_hf_config(dir);
  c.checkpoint_ = std::make_unique<io::Checkpoint>(io::Checkpoint::open(dir));
  c.files_ = std::make_unique<Files>(Files{mode, {}});
  return c;
}

HfCheckpoint::HfCheckpoint(HfCheckpoint&&) noexcept = default;
HfCheckpoint& HfCheckpoint::operator=(HfCheckpoint&&) noexcept = default;
HfCheckpoint::~HfCheckpoint() = default;

std::unique_ptr<pipeline::LayerWeights> HfCheckpoint::layer(index_t layer) const {
  const pipeline::LayerKind kind = pipeline::layer_kind(model_, layer);
  pipeline::LayerWeightParts parts;
  LayerReader r(model_, *checkpoint_, *files_, layer, parts.buffers);
  if (model_.attention == pipeline::AttentionKind::mla)
    read_mla(r, model_, parts.mla);
  else
    read_qwen3(r, model_, parts.qwen3);
  if (kind == pipeline::LayerKind::moe)
    read_moe(r, model_, parts.moe);
  else
    read_dense(r, model_, parts.dense);
  return std::make_unique<pipeline::LayerWeights>(std::move(parts));
}

}  // namespace atom::model
