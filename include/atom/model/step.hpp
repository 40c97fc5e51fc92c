// Decode steps, as an engine runs them: a batch of sequences, one query token each, goes through
// a model's decoder layers step after step. A step writes each layer's cache at every token's
// slot and then advances the batch where it lives (ops::advance_decode: positions, context
// lengths and slots), so the next step needs nothing from the host. On the GPU backend a step can
// therefore be captured once as a graph and replayed: no host synchronisation, allocation or
// host-side decision happens inside it (the token count, and with it the dual-stream choice, is
// fixed per captured graph).
//
// Each sequence's context before its first step is prefilled with random cache rows (a prefill
// atom does not run), and each step feeds every sequence the same random hidden state (the
// embedding of the token fed): what a step costs does not depend on those values.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "atom/model/decode.hpp"

namespace atom::model {

struct StepSetup {
  const pipeline::ModelConfig* model = nullptr;
  std::vector<DecodeLayer> layers;  // the layers' host weights (the host backend runs on them)
  // From the environment, with the format of the GQA caches the step allocates (its
  // KvCacheFormat); each block at its weights' format.
  policy::Point point;
  std::int64_t dual_stream_threshold = 0;
  // Per sequence, the context length its first step attends to (>= 1, the token itself
  // included): context_lens[s] - 1 rows are prefilled.
  std::vector<std::int32_t> context_lens;
  index_t steps = 1;  // steps the caches hold: the contexts may grow by that many tokens
  std::uint64_t seed = 1;
  // Padding tokens after the sequences' (slot -1: no cache row written or read, attention output
  // zero; the MLP blocks still compute them), as a data-parallel rank pads its batch to the
  // group's largest.
  index_t padding = 0;
};

// The bytes a decode step must move at least, its byte floor: every weight its tokens' path reads,
// once (of the routed experts, those some token chose), every cache row each token attends to,
// the cache rows it writes, and the hidden states it reads and writes between blocks. Weights
// count in their checkpoint format (MXFP4 codes and scales, FP8 and its block scales, bf16);
// norms and the router count, the RoPE table and the batch metadata do not (a few kilobytes).
struct StepBytes {
  double weights = 0;
  double cache_read = 0;
  double cache_write = 0;
  double activations = 0;
  double total() const { return weights + cache_read + cache_write + activations; }
};

// Bytes of one cache slot of one layer (the row a token writes and later tokens read): MLA's bf16
// latent row (kv_lora + rope), or per KV head the key and value rows in the GQA cache's format
// (FP8 codes with their float scales in fp8_row, FP8 codes alone in fp8_tensor, bf16 values).
inline double cache_row_bytes(const pipeline::ModelConfig& m,
                              ops::KvCacheFormat f = ops::KvCacheFormat::fp8_row) {
  if (m.attention == pipeline::AttentionKind::mla)
    return 2.0 * static_cast<double>(m.kv_lora_rank + m.qk_rope_dim);
  const double d = static_cast<double>(m.head_dim);
  const double row = f == ops::KvCacheFormat::bf16         ? 2.0 * d
                     : f == ops::KvCacheFormat::fp8_tensor ? d
                                                           : d + 4.0;
  return static_cast<double>(m.num_kv_heads) * 2.0 * row;
}

// One block of a step (a layer's attention or MLP block): its pipeline, the bytes it must move
// (its share of StepBytes: its weights, for attention the cache rows, and the hidden states it
// reads and writes), and in a profiled step its time.
struct BlockCost {
  index_t layer = 0;  // the checkpoint's layer index (DecodeLayer::index)
  policy::PipelineId pipeline{};
  StepBytes bytes;
  double ms = 0;
};

class DecodeSteps {
 public:
  virtual ~DecodeSteps() = default;

  // Runs one step (every layer, then the batch's advance), enqueued on the backend's stream.
  virtual void step() = 0;
  // GPU: records one step as a graph, without running it; replay() then runs it. Call it after
  // at least one step(), which sizes the workspace and the kernels' scratch memory.
  virtual void capture() = 0;
  virtual void replay() = 0;
  // Waits until every enqueued step has completed.
  virtual void synchronize() = 0;

  // The stream steps are enqueued on (a hipStream_t / cudaStream_t, for the caller's events);
  // null on the host backend.
  virtual void* stream() const = 0;
  // Steps run so far (step() and replay() each count one; capture() does not).
  virtual index_t steps_run() const = 0;
  index_t tokens() const {
    return static_cast<index_t>(setup().context_lens.size()) + setup().padding;
  }
  virtual const StepSetup& setup() const = 0;
  // The blocks' instantiations of each layer (LayerHandles::name).
  virtual std::vector<std::string> instances() const = 0;
  // The last layer's output with the residual stream added: the hidden state the last step left,
  // [tokens, hidden].
  virtual std::vector<float> hidden() const = 0;
  // The byte floor of the last step run (routes read back from the backend); zero before one.
  virtual StepBytes last_step_bytes() const = 0;
  // Runs one step eagerly with a timing point before and after every block (device events on the
  // stream on the GPU, the host's clock on the host) and returns each block's time and bytes, in
  // the order run. It counts as a step; the batch's advance at its end is in no block.
  virtual std::vector<BlockCost> profile() = 0;
  // The backend's copy rate measured now (ops::copy_gbs on the steps' stream), for the fraction of
  // it a step reaches. Call it between steps (it waits for the device).
  virtual double copy_gbs() = 0;
  // Every byte a step writes (the last layer's output and residual, every layer's cache and the
  // batch metadata), for comparing two runs bit for bit.
  virtual std::vector<std::byte> snapshot() const = 0;
};

// The host backend: step() runs eagerly; capture() and replay() throw (there is no graph).
std::unique_ptr<DecodeSteps> decode_steps(const StepSetup& setup);

}  // namespace atom::model
