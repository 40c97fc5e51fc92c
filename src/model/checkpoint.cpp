#include "atom/model/checkpoint.hpp"

#include <cstring>
#include <map>
#include <mutex>
#include <regex>
#include <string_view>
#include <vector>

#include "../pipeline/weight_memory.hpp"
#include "atom/model/hf_config.hpp"
#include "atom/ops/quant.hpp"
#include "atom/pipeline/tp.hpp"

namespace atom::model {

namespace {

using io::Dtype;
using io::LoadError;
using pipeline::ModelConfig;
using pipeline::Part;
using pipeline::detail::alloc;
using pipeline::detail::Buffers;
using policy::WeightFormat;

std::string shape_text(const std::vector<std::uint64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string format_name(WeightFormat f) {
  return std::string(policy::weight_format.label(static_cast<std::uint8_t>(f)));
}

}  // namespace

// The open shards, each mapped or read once. Tensor-parallel ranks read their layers from one
// checkpoint on several threads at once: the map is shared, so it is locked (its entries, once
// in, never move).
struct HfCheckpoint::Files {
  io::LoadMode mode;
  std::map<std::filesystem::path, io::SafetensorsFile> open;
  std::mutex lock;

  const io::SafetensorsFile& file(const std::filesystem::path& path) {
    const std::lock_guard hold(lock);
    auto it = open.find(path);
    if (it == open.end()) it = open.emplace(path, io::SafetensorsFile::open(path, mode)).first;
    return it->second;
  }
};

namespace {

// Reads one layer's tensors, checking each against what the model implies.
class LayerReader {
 public:
  // Modules (names under the layer) in the order atom stacks them: the rows each stores, and the
  // rows of it this rank reads (all of them by default).
  struct Module {
    std::string name;
    index_t rows = 0;
    Part read{0, -1};
    Module(std::string n, index_t r) : name(std::move(n)), rows(r), read{0, r} {}
    Module(std::string n, index_t r, Part p) : name(std::move(n)), rows(r), read(p) {}
  };
  using Parts = std::vector<Module>;

  LayerReader(const ModelConfig& m, const io::Checkpoint& c, HfCheckpoint::Files& files,
              index_t layer, Buffers& buffers)
      : m_(m),
        c_(c),
        files_(files),
        prefix_("model.layers." + std::to_string(layer) + "."),
        b_(buffers) {
    for (const auto& p : m.quant.unquantized)
      if (p.regex) patterns_.emplace_back(p.text);
  }

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

  // A norm weight [n] (the hidden size by default), bf16.
  View1<const bf16> norm(const std::string& module, index_t n = -1) {
    if (n < 0) n = m_.hidden;
    const std::string name = prefix_ + module + ".weight";
    expect(name, {Dtype::BF16}, {static_cast<std::uint64_t>(n)});
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
    for (const auto& re : patterns_)
      if (std::regex_match(module, re)) return WeightFormat::bf16;
    for (const auto& p : m_.quant.unquantized) {
      if (p.regex) continue;
      const bool hit = m_.quant.method == QuantMethod::fp8_block
                           ? module.find(p.text) != std::string::npos
                           : module == p.text;
      if (hit) return WeightFormat::bf16;
    }
    return m_.quant.method == QuantMethod::fp8_block ? WeightFormat::fp8_block
                                                     : WeightFormat::mxfp4;
  }

  // Linear modules stacked along N into one weight [sum of rows read, columns read of k], in their
  // common format. A column window starts on a quant group (the TP splits guarantee it).
  pipeline::LinearWeight linear(const Parts& parts, index_t k, Part cols = {0, -1}) {
    return pipeline::detail::as_linear(stacked({""}, parts, k, cols));
  }

  // The routed experts `experts`: each expert's modules stacked along N, [E, sum of rows, k].
  pipeline::ExpertWeights experts(Part experts, const Parts& parts, index_t k,
                                  Part cols = {0, -1}) {
    std::vector<std::string> stacks;
    for (index_t e = experts.begin; e < experts.end(); ++e)
      stacks.push_back("mlp.experts." + std::to_string(e) + ".");
    return stacked(stacks, parts, k, cols);
  }

  // Rows `read` of kv_b_proj [heads * (nope + v), kv_lora] at their exact values, as floats.
  std::vector<float> dense_values(const std::string& module, index_t n, Part read, index_t k) {
    const pipeline::LinearWeight w = linear({{module, n, read}}, k);
    n = read.count;
    std::vector<float> v(static_cast<std::size_t>(n * k));
    const auto out = make_view(v.data(), n, k);
    switch (w.format) {
      case WeightFormat::bf16:
        for (index_t r = 0; r < n; ++r)
          for (index_t c = 0; c < k; ++c) out(r, c) = to_float(w.bf16.w(r, c));
        break;
      case WeightFormat::fp8_block:
        for (index_t r = 0; r < n; ++r)
          for (index_t c = 0; c < k; ++c)
            out(r, c) = to_float(w.fp8.q(r, c)) *
                        w.fp8.scale(r / w.fp8.block_n, c / ops::fp8_weight_block_k);
        break;
      case WeightFormat::mxfp4:
        ops::dequantize(ops::Host{}, w.mxfp4, out);
        break;
    }
    return v;
  }

  const std::string& prefix() const { return prefix_; }
  Buffers& buffers() { return b_; }

 private:
  static index_t fp8_cols(index_t k) { return ops::ceil_div(k, ops::fp8_weight_block_k); }

  // One weight per stack (the module names prefixed by stacks[i]), the parts of each stacked
  // along N in order, all in the format of the first: [stacks, sum of rows, k].
  pipeline::ExpertWeights stacked(const std::vector<std::string>& stacks, const Parts& parts,
                                  index_t stored_k, Part cols) {
    if (cols.count < 0) cols = {0, stored_k};
    const index_t k = cols.count;
    const WeightFormat f = format_of(stacks.front() + parts.front().name);
    for (const std::string& stack : stacks)
      for (const Module& part : parts) {
        const std::string name = stack + part.name;
        const WeightFormat g = format_of(name);
        if (g != f)
          throw LoadError(file_of(prefix_ + name + ".weight"), prefix_ + name + ".weight",
                          "is " + format_name(g) + " but " + prefix_ + stacks.front() +
                              parts.front().name + ".weight, which atom stacks with it, is " +
                              format_name(f));
      }
    const auto e = static_cast<index_t>(stacks.size());
    index_t n = 0;
    for (const Module& part : parts) n += part.read.count;
    pipeline::ExpertWeights w;
    w.format = f;
    switch (f) {
      case WeightFormat::bf16:
        w.bf16.w = alloc<bf16>(b_, e, n, k);
        break;
      case WeightFormat::mxfp4:
        if (k % 2 != 0)
          throw LoadError(source(), prefix_ + stacks.front() + parts.front().name + ".weight",
                          "has K = " + std::to_string(k) + "; MXFP4 needs an even K");
        w.mxfp4 = {alloc<std::uint8_t>(b_, e, n, ops::mxfp4_packed_cols(k)),
                   alloc<e8m0>(b_, e, n, ops::mxfp4_scale_cols(k)), k};
        break;
      case WeightFormat::fp8_block: {
        // The block grid survives the stacking when every part read starts a block and all but
        // the last fill whole blocks of rows; otherwise each row keeps its block's scales (the
        // same values).
        const index_t bn = block_n();
        w.fp8.block_n = bn;
        for (std::size_t i = 0; i < parts.size(); ++i)
          if (parts[i].read.begin % bn != 0 ||
              (i + 1 < parts.size() && parts[i].read.count % bn != 0))
            w.fp8.block_n = 1;
        w.fp8.q = alloc<fp8_e4m3>(b_, e, n, k);
        w.fp8.scale = alloc<float>(b_, e, ops::ceil_div(n, w.fp8.block_n), fp8_cols(k));
        break;
      }
    }
    for (index_t i = 0; i < e; ++i) {
      index_t at = 0;
      for (const Module& part : parts) {
        read_rows(prefix_ + stacks[static_cast<std::size_t>(i)] + part.name, part, stored_k, cols,
                  w, i, at);
        at += part.read.count;
      }
    }
    return w;
  }

  index_t block_n() const { return m_.quant.block_n > 0 ? m_.quant.block_n : 128; }

  // Reads the rows part.read of `module` (stored [part.rows, stored_k]: its weight and its scales),
  // columns `cols`, into stack `stack` of w at row `at`.
  void read_rows(const std::string& module, const Module& part, index_t stored_k, Part cols,
                 pipeline::ExpertWeights& w, index_t stack, index_t at) {
    const std::string name = module + ".weight";
    const auto u = [](index_t v) { return static_cast<std::uint64_t>(v); };
    const index_t rows = part.rows;
    const Part r = part.read;
    // Row by row: `width` bytes from column byte `first` of rows `stride` bytes apart.
    const auto copy_rows = [&](const std::byte* src, index_t stride, index_t first, index_t width,
                               auto* dst, index_t dst_stride) {
      for (index_t i = 0; i < r.count; ++i)
        std::memcpy(reinterpret_cast<std::byte*>(dst) + i * dst_stride,
                    src + (r.begin + i) * stride + first, static_cast<std::size_t>(width));
    };
    switch (w.format) {
      case WeightFormat::bf16: {
        expect(name, {Dtype::BF16}, {u(rows), u(stored_k)});
        auto dst = w.bf16.w[stack][at];
        copy_rows(bytes(name).data(), stored_k * 2, cols.begin * 2, cols.count * 2, dst.data,
                  w.bf16.w.stride(1) * 2);
        break;
      }
      case WeightFormat::mxfp4: {
        const std::string s = module + ".weight_scale";
        const index_t sk = ops::mxfp4_scale_cols(stored_k);
        expect(name, {Dtype::U8}, {u(rows), u(stored_k / 2)});
        expect(s, {Dtype::U8, Dtype::F8_E8M0}, {u(rows), u(sk)});
        copy_rows(bytes(name).data(), stored_k / 2, cols.begin / 2, cols.count / 2,
                  w.mxfp4.packed[stack][at].data, w.mxfp4.packed.stride(1));
        copy_rows(bytes(s).data(), sk, cols.begin / mx_block, ops::mxfp4_scale_cols(cols.count),
                  w.mxfp4.scale[stack][at].data, w.mxfp4.scale.stride(1));
        break;
      }
      case WeightFormat::fp8_block: {
        const index_t bn = block_n();
        const std::string s = module + ".weight_scale_inv";
        expect(name, {Dtype::F8_E4M3}, {u(rows), u(stored_k)});
        expect(s, {Dtype::F32, Dtype::BF16}, {u(ops::ceil_div(rows, bn)), u(fp8_cols(stored_k))});
        copy_rows(bytes(name).data(), stored_k, cols.begin, cols.count, w.fp8.q[stack][at].data,
                  w.fp8.q.stride(1));
        const std::vector<float> scale = io::float_values(info(s).dtype, bytes(s));
        const auto dst = w.fp8.scale[stack];
        const index_t stored_cols = fp8_cols(stored_k);
        const index_t c0 = cols.begin / ops::fp8_weight_block_k;
        const index_t c = fp8_cols(cols.count);
        // Row i of the part read takes its source block's scales at the destination's grid.
        for (index_t i = 0; i < r.count; i += w.fp8.block_n)
          std::copy_n(scale.begin() + ((r.begin + i) / bn) * stored_cols + c0, c,
                      dst[(at + i) / w.fp8.block_n].data);
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
  std::vector<std::regex> patterns_;  // the config's "re:" patterns, compiled once
};

// Each block reads this rank's share only (pipeline/tp.hpp's splits, by the block's format).
void read_mla(LayerReader& r, const ModelConfig& m, pipeline::TpShape tp, pipeline::MlaWeights& w) {
  // A block's format is its first module's (the others must agree, pipeline::weight_format).
  const Part mine = pipeline::attention_split(m, tp, r.format_of("self_attn.q_a_proj")).heads;
  const index_t heads = mine.count;
  const index_t nope = m.qk_nope_dim;
  const index_t v_dim = m.v_head_dim;
  const index_t lora = m.kv_lora_rank;
  const index_t q_head = nope + m.qk_rope_dim;
  Buffers& b = r.buffers();
  w.input_norm = r.norm("input_layernorm");
  w.qkv_a = r.linear({{"self_attn.q_a_proj", m.q_lora_rank},
                      {"self_attn.kv_a_proj_with_mqa", m.kv_lora_rank + m.qk_rope_dim}},
                     m.hidden);
  w.q_a_norm = r.norm("self_attn.q_a_layernorm", m.q_lora_rank);
  w.kv_a_norm = r.norm("self_attn.kv_a_layernorm", m.kv_lora_rank);
  w.q_b = r.linear(
      {{"self_attn.q_b_proj", m.num_heads * q_head, {mine.begin * q_head, heads * q_head}}},
      m.q_lora_rank);
  w.o_proj = r.linear({{"self_attn.o_proj", m.hidden}}, m.num_heads * v_dim,
                      {mine.begin * v_dim, heads * v_dim});
  // kv_b_proj rows per head: nope rows of W_UK^T, then v rows of W_UV.
  const index_t kv_head = nope + v_dim;
  const std::vector<float> kv_b = r.dense_values("self_attn.kv_b_proj", m.num_heads * kv_head,
                                                 {mine.begin * kv_head, heads * kv_head}, lora);
  std::vector<float> uk(static_cast<std::size_t>(heads * lora * nope));
  std::vector<float> uv(static_cast<std::size_t>(heads * v_dim * lora));
  for (index_t h = 0; h < heads; ++h) {
    const float* head = kv_b.data() + h * (nope + v_dim) * lora;
    for (index_t n = 0; n < nope; ++n)
      for (index_t c = 0; c < lora; ++c)
        uk[static_cast<std::size_t>((h * lora + c) * nope + n)] = head[n * lora + c];
    std::copy_n(head + nope * lora, v_dim * lora, uv.data() + h * v_dim * lora);
  }
  w.w_uk_fp8 = pipeline::detail::fp8_heads(b, uk.data(), heads, lora, nope);
  w.w_uv_fp8 = pipeline::detail::fp8_heads(b, uv.data(), heads, v_dim, lora);
  w.w_uk_mxfp4 = pipeline::detail::mxfp4_heads(b, uk.data(), heads, lora, nope);
  w.w_uv_mxfp4 = pipeline::detail::mxfp4_heads(b, uv.data(), heads, v_dim, lora);
  w.cos_sin = pipeline::detail::rope_table(b, m, m.qk_rope_dim);
}

void read_qwen3(LayerReader& r, const ModelConfig& m, pipeline::TpShape tp,
                pipeline::Qwen3AttentionWeights& w) {
  const index_t hd = m.head_dim;
  const auto s = pipeline::attention_split(m, tp, r.format_of("self_attn.q_proj"));
  const Part q{s.heads.begin * hd, s.heads.count * hd};
  const Part kv{s.kv_heads.begin * hd, s.kv_heads.count * hd};
  w.input_norm = r.norm("input_layernorm");
  w.qkv = r.linear({{"self_attn.q_proj", m.num_heads * hd, q},
                    {"self_attn.k_proj", m.num_kv_heads * hd, kv},
                    {"self_attn.v_proj", m.num_kv_heads * hd, kv}},
                   m.hidden);
  w.q_norm = r.norm("self_attn.q_norm", hd);
  w.k_norm = r.norm("self_attn.k_norm", hd);
  w.o_proj = r.linear({{"self_attn.o_proj", m.hidden}}, m.num_heads * hd, q);
  w.cos_sin = pipeline::detail::rope_table(r.buffers(), m, hd);
}

void read_moe(LayerReader& r, const ModelConfig& m, pipeline::TpShape tp, pipeline::MoeWeights& w) {
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
    const std::vector<float> values = io::float_values(r.info(bias).dtype, r.bytes(bias));
    std::copy(values.begin(), values.end(), v.data);
    w.router_bias = v;
  }
  const index_t inter = m.moe_intermediate;
  const WeightFormat f = r.format_of("mlp.experts.0.gate_proj");
  const auto split = pipeline::expert_split(m, tp, f);
  const Part i = split.intermediate;
  w.gate_up = r.experts(split.experts, {{"gate_proj", inter, i}, {"up_proj", inter, i}}, m.hidden);
  w.down = r.experts(split.experts, {{"down_proj", m.hidden}}, inter, i);
  const index_t shared = m.num_shared_experts * inter;
  const auto shared_split = pipeline::mlp_split(shared, tp, f);
  if (m.num_shared_experts > 0 && shared_split.computes(tp)) {
    const Part p = shared_split.intermediate;
    w.shared_gate_up = r.linear(
        {{"mlp.shared_experts.gate_proj", shared, p}, {"mlp.shared_experts.up_proj", shared, p}},
        m.hidden);
    w.shared_down = r.linear({{"mlp.shared_experts.down_proj", m.hidden}}, shared, p);
  } else {
    w.shared_gate_up.format = w.shared_down.format = w.gate_up.format;
  }
}

void read_dense(LayerReader& r, const ModelConfig& m, pipeline::TpShape tp,
                pipeline::DenseMlpWeights& w) {
  const index_t inter = m.intermediate;
  const Part p = pipeline::mlp_split(inter, tp, r.format_of("mlp.gate_proj")).intermediate;
  w.post_norm = r.norm("post_attention_layernorm");
  w.gate_up = r.linear({{"mlp.gate_proj", inter, p}, {"mlp.up_proj", inter, p}}, m.hidden);
  w.down = r.linear({{"mlp.down_proj", m.hidden}}, inter, p);
}

}  // namespace

HfCheckpoint HfCheckpoint::open(const std::filesystem::path& dir, io::LoadMode mode) {
  HfCheckpoint c;
  c.dir_ = dir;
  c.mode_ = mode;
  c.model_ = load_hf_config(dir);
  c.checkpoint_ = std::make_unique<io::Checkpoint>(io::Checkpoint::open(dir));
  c.files_ = std::make_unique<Files>();
  c.files_->mode = mode;
  return c;
}

HfCheckpoint::HfCheckpoint(HfCheckpoint&&) noexcept = default;
HfCheckpoint& HfCheckpoint::operator=(HfCheckpoint&&) noexcept = default;
HfCheckpoint::~HfCheckpoint() = default;

std::unique_ptr<pipeline::LayerWeights> HfCheckpoint::layer(index_t layer,
                                                            pipeline::TpShape tp) const {
  const pipeline::LayerKind kind = pipeline::layer_kind(model_, layer);
  pipeline::LayerWeightParts parts;
  LayerReader r(model_, *checkpoint_, *files_, layer, parts.buffers);
  if (model_.attention == pipeline::AttentionKind::mla)
    read_mla(r, model_, tp, parts.mla);
  else
    read_qwen3(r, model_, tp, parts.qwen3);
  if (kind == pipeline::LayerKind::moe)
    read_moe(r, model_, tp, parts.moe);
  else
    read_dense(r, model_, tp, parts.dense);
  return std::make_unique<pipeline::LayerWeights>(std::move(parts));
}

}  // namespace atom::model
