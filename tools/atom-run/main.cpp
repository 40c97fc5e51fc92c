// atom-run: resolves the ATOM_* environment to an instantiation, runs it on a decode batch of a
// model preset, checks it against the all-separate reference and prints the error and timings.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "atom/dispatch/dispatch.hpp"
#include "atom/dist/dp_group.hpp"
#include "atom/gpu/device.hpp"
#include "atom/io/writer.hpp"
#include "atom/model/checkpoint.hpp"
#include "atom/model/decode.hpp"
#include "atom/model/step.hpp"
#include "atom/pipeline/harness.hpp"
#include "atom/pipeline/layer.hpp"
#if ATOM_GPU_INSTANCES
#include "atom/model/decode_gpu.hpp"
#include "atom/pipeline/harness_gpu.hpp"
#include "atom/pipeline/tp_gpu.hpp"
#endif

namespace {

using namespace atom;
using policy::PipelineId;

constexpr const char* usage =
    "usage: atom-run [--model NAME] [--pipeline layer|mla|moe|qwen3-attn|dense-mlp] [--tokens N]\n"
    "                [--context L] [--iters K] [--seed S] [--backend auto|host|gpu]\n"
    "       atom-run --checkpoint DIR [--layers A:B|N] [--input IN --output OUT]\n"
    "                [--tokens N] [--context L]\n"
    "       atom-run [--model NAME | --checkpoint DIR] --steps S [--layers A:B|N] [--tokens N]\n"
    "                [--context L] [--backend auto|host|gpu]\n"
    "       atom-run ... --tp N   (host backend: N ranks as threads)\n"
    "       atom-run ... --steps S --dp N   (N data-parallel ranks as processes)\n"
    "  --model       deepseek-v3-tiny (default), qwen3-30b-a3b-tiny, deepseek-v3, qwen3-30b-a3b\n"
    "  --pipeline    layer (default: the model's attention block and its MoE block, each "
    "checked),\n"
    "                mla, moe, qwen3-attn, dense-mlp\n"
    "  --tokens      decode tokens in the batch (default 4), each with its own context length\n"
    "  --context     longest context (default 64); token i gets a length between L/2 and L\n"
    "  --iters       timed runs after the checked one (default 3)\n"
    "  --backend     auto (default: gpu when this build has GPU instantiations and a GPU is\n"
    "                present, else host), host, gpu. A GPU run is checked against the host\n"
    "                instantiation of the same point.\n"
    "  --checkpoint  a Hugging Face checkpoint folder (config.json, safetensors) of\n"
    "                DeepseekV3ForCausalLM or Qwen3MoeForCausalLM: runs its decoder layers, each\n"
    "                block at its weights' format (on the GPU: copied from host memory)\n"
    "  --layers      the checkpoint layers A..B-1 (default all; N means 0:N)\n"
    "  --input       safetensors with hidden.<s> [len_s, hidden] (bf16 or F32): the hidden state\n"
    "                entering layer A per sequence; decoded together from empty caches.\n"
    "                Without it, --tokens random sequences of lengths L/2..L are decoded.\n"
    "  --output      writes hidden.<s>.layer.<l> [len_s, hidden] F32 (layer l's output, residual\n"
    "                included) and, for MoE layers, route.<s>.layer.<l> [len_s, top_k] I32\n"
    "  --kv-cache    the format of a Qwen3 model's KV cache: fp8_row (default; FP8 with a scale\n"
    "                per token and head), fp8_tensor (FP8 with one scale per tensor, as vLLM and\n"
    "                SGLang keep it; a checkpoint run uses scale 1), bf16\n"
    "  --steps       decode S steps of --tokens sequences (contexts L/2..L, prefilled) through\n"
    "                the decoder layers (a preset: --layers N layers, default 1, each with its "
    "own\n"
    "                random weights); on the GPU one step is captured as a graph and replayed.\n"
    "                Prints the time per step, eager and replayed, tokens per second, and the\n"
    "                step's byte floor (weights read, routed experts once, cache, activations).\n"
    "  --tp          tensor parallel size 1..8 (default 1): each rank holds its shard of the\n"
    "                weights (heads, expert or MLP columns) and the blocks all-reduce into the\n"
    "                next norm (ATOM_ENABLE_ALLREDUCE_RMSNORM_FUSION: fused or separate); a "
    "preset\n"
    "                block is checked against the same block at size 1, a checkpoint decoded at\n"
    "                size N; not with --steps. With --backend gpu (preset blocks): N processes,\n"
    "                rank r on GPU r, joined as one TP group (NCCL / RCCL and the fused kernel).\n"
    "  --dp          starts N processes of atom-run as one data-parallel group (ATOM_DP_* set\n"
    "                for each, the store on a free loopback port) and waits for them; each\n"
    "                decodes its own batch with --steps. A process started with ATOM_DP_SIZE > 1\n"
    "                joins that group instead. Every step the ranks agree whether any still has\n"
    "                work (a rank done early runs dummy steps) and pad their batches to the\n"
    "                largest with padding tokens (slot -1); rank 0 prints the report.\n"
    "The ATOM_* variables pick the instantiation (atom-env --instances lists them).\n";

struct Options {
  std::string model = "deepseek-v3-tiny";
  std::string pipeline = "layer";
  long tokens = 4;
  long context = 64;
  long iters = 3;
  long seed = 1;
  std::string backend = "auto";
  std::string checkpoint;
  std::string layers;
  std::string input;
  std::string output;
  long steps = 0;
  ops::KvCacheFormat kv_cache = ops::KvCacheFormat::fp8_row;
  long tp = 1;
  long dp = 1;
  long tp_rank = -1;  // a GPU TP rank that --tp N --backend gpu started, and its store's port
  long tp_port = 0;
  std::vector<std::string> args;  // the command line, for the ranks --dp starts
};

long parse_number(std::string_view flag, std::string_view text, long min, long max) {
  long v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || v < min || v > max)
    throw std::invalid_argument(std::string(flag) + " expects an integer in " +
                                std::to_string(min) + ".." + std::to_string(max) + ", got '" +
                                std::string(text) + "'");
  return v;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) throw std::invalid_argument("missing value after " + std::string(flag));
    const std::string_view value = argv[++i];
    if (flag == "--model")
      o.model = value;
    else if (flag == "--pipeline")
      o.pipeline = value;
    else if (flag == "--tokens")
      o.tokens = parse_number(flag, value, 1, 65536);
    else if (flag == "--context")
      o.context = parse_number(flag, value, 1, 1 << 20);
    else if (flag == "--iters")
      o.iters = parse_number(flag, value, 0, 100000);
    else if (flag == "--seed")
      o.seed = parse_number(flag, value, 0, 1L << 40);
    else if (flag == "--backend")
      o.backend = value;
    else if (flag == "--checkpoint")
      o.checkpoint = value;
    else if (flag == "--layers")
      o.layers = value;
    else if (flag == "--input")
      o.input = value;
    else if (flag == "--output")
      o.output = value;
    else if (flag == "--steps")
      o.steps = parse_number(flag, value, 1, 1 << 20);
    else if (flag == "--kv-cache")
      o.kv_cache = ops::kv_cache_format_named("--kv-cache", value);
    else if (flag == "--tp")
      o.tp = parse_number(flag, value, 1, 8);
    else if (flag == "--dp")
      o.dp = parse_number(flag, value, 1, 64);
    else if (flag == "--tp-rank")
      o.tp_rank = parse_number(flag, value, 0, 7);
    else if (flag == "--tp-port")
      o.tp_port = parse_number(flag, value, 1, 65535);
    else
      throw std::invalid_argument("unknown option " + std::string(flag));
    if (flag != "--dp") {
      o.args.emplace_back(flag);
      o.args.emplace_back(value);
    }
  }
  return o;
}

// The pipelines --pipeline names; "layer" is the model's attention block and its MoE block.
std::vector<PipelineId> pipelines_for(std::string_view name, const pipeline::ModelConfig& m) {
  const PipelineId attention = pipeline::attention_pipeline(m);
  if (name == "layer") return {attention, PipelineId::moe_block};
  if (name == "moe") return {PipelineId::moe_block};
  if (name == "mla") return {PipelineId::mla_attention};
  if (name == "qwen3-attn") return {PipelineId::qwen3_attention};
  if (name == "dense-mlp") return {PipelineId::dense_mlp};
  throw std::invalid_argument("unknown pipeline '" + std::string(name) +
                              "'; expected mla, moe, qwen3-attn, dense-mlp or layer");
}

// Context lengths between L/2 and L, different per token (a ragged batch).
std::vector<std::int32_t> ragged_contexts(long tokens, long context) {
  std::vector<std::int32_t> lens;
  for (long i = 0; i < tokens; ++i) {
    const long span = context - context / 2;
    lens.push_back(static_cast<std::int32_t>(std::max(1L, context - (span * i) / tokens)));
  }
  return lens;
}

constexpr bool built_gpu = ATOM_GPU_INSTANCES != 0;

policy::BackendId backend_for(std::string_view name) {
  if (name == "host") return policy::BackendId::host;
  if (name == "gpu") {
    if (!built_gpu)
      throw std::invalid_argument(
          "--backend gpu: this build has no GPU instantiations (configure with ATOM_GPU=cuda or "
          "hip)");
    if (gpu::device_count() == 0)
      throw std::invalid_argument("--backend gpu: no " + std::string(gpu::backend_name()) +
                                  " device is present");
    return policy::BackendId::gpu;
  }
  if (name == "auto")
    return built_gpu && gpu::device_count() > 0 ? policy::BackendId::gpu : policy::BackendId::host;
  throw std::invalid_argument("unknown backend '" + std::string(name) +
                              "'; expected auto, host or gpu");
}

// Tensor parallelism on the host runs the ranks as threads (--backend auto or host); on the GPU
// (--backend gpu) one process per GPU, which atom-run starts (launch_tp_gpu).
policy::BackendId tp_backend(const Options& o) {
  const policy::BackendId backend = backend_for(o.backend);
  if (o.tp == 1) return backend;
  if (o.steps > 0)
    throw std::invalid_argument("--tp " + std::to_string(o.tp) +
                                " with --steps: decode steps run at tensor parallel size 1");
  if (o.backend != "gpu") return policy::BackendId::host;
  if (gpu::device_count() < o.tp)
    throw std::invalid_argument("--tp " + std::to_string(o.tp) + " --backend gpu needs " +
                                std::to_string(o.tp) + " GPUs, one per rank; " +
                                std::to_string(gpu::device_count()) + " are present");
  return backend;
}

// --tp N on a preset block: the block at size N (rank threads, sharded weights) against the same
// instantiation at size 1.
template <PipelineId P>
pipeline::ReferenceCheck check_tp(const dispatch::Handle<P>& handle, const pipeline::RunInputs& in,
                                  long tp, pipeline::RunOutput& got) {
  got = pipeline::run_tp(handle, in, tp);
  const pipeline::RunOutput want = pipeline::run_once(handle, in);
  pipeline::ReferenceCheck c = pipeline::judge(std::string(handle.name()) + " at TP 1",
                                               pipeline::tp_error_bound(P, tp), got, want);
  c.ok = c.ok && got.residual == want.residual;
  return c;
}

// Random weights are drawn on every host thread (pipeline::LayerWeights).
void report_generated(std::chrono::steady_clock::time_point since) {
  std::printf("weights     generated in %.1f s on %u threads\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count(),
              std::max(1u, std::thread::hardware_concurrency()));
}

template <PipelineId P>
int run(const Options& o, const env::Config& config, const pipeline::ModelConfig& model,
        [[maybe_unused]] pipeline::TpComm* gpu_tp) {
  const policy::BackendId backend = tp_backend(o);
  const bool on_gpu = backend == policy::BackendId::gpu;
  const auto handle =
      dispatch::resolve_point<P>(policy::point_from(config).with(o.kv_cache), backend);
  const std::string reference =
      on_gpu     ? policy::instance_name(P, policy::BackendId::host, handle.point())
      : o.tp > 1 ? std::string(handle.name()) + " at tensor parallel size 1"
                 : policy::instance_name(P, policy::BackendId::host,
                                         policy::separate_of(P, handle.point()));
  std::printf("pipeline    %s on %s\n", std::string(policy::pipeline_name(P)).c_str(),
              model.name.c_str());
  std::printf("policy      %s\n", policy::describe(P, handle.point()).c_str());
  std::printf("instance    %s\n", std::string(handle.name()).c_str());
  std::printf("reference   %s\n", reference.c_str());
  if (on_gpu)
    std::printf("backend     gpu (%s, %s)\n", gpu::backend_name(), gpu::device_name(0).c_str());
  else if (built_gpu)
    std::printf("backend     host\n");
  else
    std::printf("backend     host (this build has no GPU instantiations)\n");
  if (o.tp > 1)
    std::printf("tensor      parallel size %ld (%s)\n", o.tp,
                on_gpu ? "one process per GPU" : "ranks as threads");

  std::printf("weights     generating (seed %ld)...\n", o.seed);
  std::fflush(stdout);
  const auto generating = std::chrono::steady_clock::now();
  const pipeline::LayerWeights weights(model, static_cast<std::uint64_t>(o.seed));
  report_generated(generating);
  pipeline::RunInputs in{&model, &weights, ragged_contexts(o.tokens, o.context),
                         static_cast<std::uint64_t>(o.seed) + 1,
                         config.get<env::Var::dual_stream_moe_token_threshold>()};
  std::printf("batch       %ld tokens, contexts %d..%d\n", o.tokens, in.context_lens.back(),
              in.context_lens.front());

  pipeline::ReferenceCheck check;
  double median_seconds = 0;
  std::size_t runs = 0;
  if (on_gpu) {
#if ATOM_GPU_INSTANCES
    const policy::Point point = handle.point();
    if (gpu_tp != nullptr) {
      // This rank's share on its GPU against the host instantiation at size 1.
      const auto got = pipeline::run_rank_gpu(handle, in, *gpu_tp);
      const auto host = dispatch::resolve_point<P>(point, policy::BackendId::host);
      check = pipeline::judge(std::string(host.name()) + " at tensor parallel size 1",
                              pipeline::gpu_error_bound(P) + pipeline::tp_error_bound(P, o.tp), got,
                              pipeline::run_once(host, in));
      std::printf("check       residual %.3e, out %.3e vs reference (bound %.2g) %s\n",
                  check.residual_error, check.out_error, check.bound, check.ok ? "ok" : "FAILED");
      return check.ok ? 0 : 1;
    }
    const pipeline::DeviceLayerWeights device(model, weights, {point.get<policy::GemmBackend>()});
    check = pipeline::check_against_host(handle, in, device);
    const int calls = static_cast<int>(std::max(1L, o.iters));
    median_seconds = pipeline::run_once_gpu(handle, in, device, calls).seconds;
    runs = static_cast<std::size_t>(calls);
#endif
  } else {
    pipeline::RunOutput got;
    if (o.tp > 1)
      check = check_tp(handle, in, o.tp, got);
    else
      check = pipeline::check_against_reference(handle, in, &got);
    std::vector<double> times{got.seconds};
    for (long i = 0; i < o.iters; ++i) {
      times.push_back(o.tp > 1 ? pipeline::run_tp(handle, in, o.tp).seconds
                               : pipeline::run_once(handle, in).seconds);
      if (o.iters >= 10 && (i + 1) % (o.iters / 10) == 0)
        std::fprintf(stderr, "\rtiming      %ld/%ld%s", i + 1, o.iters,
                     i + 1 == o.iters ? "\n" : "");
    }
    std::sort(times.begin(), times.end());
    median_seconds = times[times.size() / 2];
    runs = times.size();
  }
  std::printf("check       residual %.3e, out %.3e vs reference (bound %.2g) %s\n",
              check.residual_error, check.out_error, check.bound, check.ok ? "ok" : "FAILED");
  if (check.checked_sequences < check.sequences)
    std::printf(
        "            on %ld of %ld sequences, evenly spaced: the host reference of the whole "
        "batch would take %.0f G multiply-adds\n",
        static_cast<long>(check.checked_sequences), static_cast<long>(check.sequences),
        pipeline::host_macs(P, in) / 1e9);
  std::printf("time        median %.3f ms over %zu runs on the %s backend%s\n",
              1e3 * median_seconds, runs, on_gpu ? "gpu" : "host",
              on_gpu ? " (device events, warm workspace)" : "");
  return check.ok ? 0 : 1;
}

// "A:B" or "N" (0:N) against the checkpoint's layer count.
std::pair<index_t, index_t> layer_range(std::string_view text, index_t layers) {
  if (text.empty()) return {0, layers};
  const auto colon = text.find(':');
  const long a = colon == std::string_view::npos
                     ? 0
                     : parse_number("--layers", text.substr(0, colon), 0, layers);
  const long b = parse_number(
      "--layers", colon == std::string_view::npos ? text : text.substr(colon + 1), 0, layers);
  if (a >= b)
    throw std::invalid_argument(
        "--layers " + std::string(text) +
        " is empty; expected A:B with 0 <= A < B <= " + std::to_string(layers));
  return {a, b};
}

// hidden.<s> for s = 0, 1, ... (bf16, or F32 rounded to bf16), [len_s, hidden].
std::vector<std::vector<bf16>> read_input(const std::string& path, index_t hidden) {
  const io::SafetensorsFile f = io::SafetensorsFile::open(path, io::LoadMode::read);
  std::vector<std::vector<bf16>> seqs;
  for (std::size_t s = 0;; ++s) {
    const std::string name = "hidden." + std::to_string(s);
    const io::TensorInfo* t = f.header().find(name);
    if (t == nullptr) break;
    if (t->shape.size() != 2 || t->shape[1] != static_cast<std::uint64_t>(hidden) ||
        t->shape[0] == 0)
      throw io::LoadError(path, name, "must be [len >= 1, " + std::to_string(hidden) + "]");
    if (t->dtype != io::Dtype::BF16 && t->dtype != io::Dtype::F32)
      throw io::LoadError(
          path, name,
          "has dtype " + std::string(io::dtype_name(t->dtype)) + ", expected BF16 or F32");
    std::vector<bf16> v;
    for (const float x : io::float_values(t->dtype, f.bytes(*t))) v.push_back(to_bf16(x));
    seqs.push_back(std::move(v));
  }
  if (seqs.empty())
    throw io::LoadError(path, "hidden.0", "is missing: the input holds no sequence");
  return seqs;
}

// --steps in a data-parallel group: every step begins with the group's step collective (is any
// rank still running, how many tokens each has); a rank whose own steps are done runs dummy
// steps (the same captured step, outputs unused) while others still have work, so that none
// waits alone. On the GPU the steps are replays of one captured step.
int run_dp_steps(const Options& o, dist::DpGroup& dp, model::DecodeSteps& run,
                 policy::BackendId backend, long padded) {
  const bool graph = backend == policy::BackendId::gpu;
  if (graph) {
    run.step();  // sizes the workspace
    run.capture();
  }
  long own = 0;
  long dummy = 0;
  run.synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    const bool working = own < o.steps;
    const dist::StepPlan plan = dp.exchange_step({working, false}, {working ? o.tokens : 0, false});
    if (!plan.state.has_unfinished) break;
    if (!working && !plan.run_dummy_batch) continue;
    graph ? run.replay() : run.step();
    run.synchronize();
    (working ? own : dummy) += 1;
  }
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() /
      static_cast<double>(std::max(1L, own + dummy));
  dp.shutdown();
  if (dp.rank() == 0) {
    const auto instances = run.instances();
    for (std::size_t l = 0; l < instances.size(); ++l)
      std::printf("layer %-5ld %s\n", static_cast<long>(run.setup().layers[l].index),
                  instances[l].c_str());
  }
  std::printf(
      "dp          rank %ld of %ld: %ld steps of %ld sequences (padded to %ld) and %ld dummy "
      "steps, %.3f ms per step with the step collective\n",
      static_cast<long>(dp.rank()), static_cast<long>(dp.size()), own, o.tokens, padded, dummy, ms);
  return 0;
}

// Eager steps with a timing point around every block, after the timed steps.
constexpr long profiled_steps = 5;

// Per kind of block (each pipeline, summed over the layers): the median time of the profiled
// steps, the bytes it must move and the fraction of the copy rate that makes.
void report_blocks(model::DecodeSteps& run, double copy) {
  std::vector<std::vector<model::BlockCost>> runs;
  for (long i = 0; i < profiled_steps; ++i) runs.push_back(run.profile());
  const std::vector<model::BlockCost>& last = runs.back();
  std::printf("blocks      median of %ld eager steps with %s around each block:\n", profiled_steps,
              run.stream() == nullptr ? "the host's clock" : "device events");
  std::printf("  %-16s %6s %10s %10s %9s %8s\n", "block", "layers", "ms/step", "MB/step", "GB/s",
              "of copy");
  std::vector<policy::PipelineId> kinds;
  for (const auto& c : last)
    if (std::find(kinds.begin(), kinds.end(), c.pipeline) == kinds.end())
      kinds.push_back(c.pipeline);
  double all_ms = 0;
  double all_bytes = 0;
  for (const policy::PipelineId kind : kinds) {
    double ms = 0;
    double bytes = 0;
    long layers = 0;
    for (std::size_t b = 0; b < last.size(); ++b) {
      if (last[b].pipeline != kind) continue;
      std::vector<double> times;
      for (const auto& r : runs) times.push_back(r[b].ms);
      std::sort(times.begin(), times.end());
      ms += times[times.size() / 2];
      bytes += last[b].bytes.total();
      ++layers;
    }
    all_ms += ms;
    all_bytes += bytes;
    const double gbs = bytes / (ms * 1e6);
    std::printf("  %-16s %6ld %10.3f %10.2f %9.1f %7.1f%%\n",
                std::string(policy::pipeline_name(kind)).c_str(), layers, ms, bytes / 1e6, gbs,
                100.0 * gbs / copy);
  }
  const double gbs = all_bytes / (all_ms * 1e6);
  std::printf("  %-16s %6s %10.3f %10.2f %9.1f %7.1f%%\n", "blocks (eager)", "", all_ms,
              all_bytes / 1e6, gbs, 100.0 * gbs / copy);
}

// --steps: decode steps of a ragged batch through the given layers; on the GPU, eager steps then
// one step captured and replayed, each timed with device events.
int run_steps(const Options& o, const env::Config& config, const pipeline::ModelConfig& m,
              const std::vector<model::DecodeLayer>& layers) {
  const policy::BackendId backend = backend_for(o.backend);
  // The data-parallel group (size 1: no group, every collective the identity). The ranks agree
  // first on the batch every rank pads to and on the steps the caches must hold.
  dist::DpGroup dp(config);
  // Beyond --steps, the caches hold the profiled steps of the per-block report.
  std::array<std::int64_t, 2> extent{o.tokens, o.steps + profiled_steps};
  dp.sync_state(extent);
  const long padded = static_cast<long>(extent[0]);
  const long capacity = static_cast<long>(extent[1]);
  model::StepSetup s;
  s.model = &m;
  s.layers = layers;
  s.point = policy::point_from(config).with(o.kv_cache);
  s.dual_stream_threshold = config.get<env::Var::dual_stream_moe_token_threshold>();
  const long context = std::min<long>(o.context, m.max_position - capacity);
  if (context < 1)
    throw std::invalid_argument("--steps " + std::to_string(capacity) +
                                " leaves no context below " + m.name + "'s " +
                                std::to_string(m.max_position) + " positions");
  // Padding: tokens after this rank's own sequences (slot -1: they write and read no cache row),
  // up to the largest batch of the group, so that every rank runs the same token count.
  s.context_lens = ragged_contexts(o.tokens, context);
  s.padding = padded - o.tokens;
  s.steps = capacity;
  s.seed = static_cast<std::uint64_t>(o.seed);
  std::unique_ptr<model::DecodeSteps> run;
#if ATOM_GPU_INSTANCES
  std::vector<std::unique_ptr<pipeline::DeviceLayerWeights>> device;
  if (backend == policy::BackendId::gpu) {
    std::vector<const pipeline::DeviceLayerWeights*> views;
    for (const auto& l : layers) {
      device.push_back(std::make_unique<pipeline::DeviceLayerWeights>(
          m, *l.weights, std::vector{s.point.get<policy::GemmBackend>()}));
      views.push_back(device.back().get());
    }
    run = model::decode_steps_gpu(s, views);
  }
#endif
  if (!run) run = model::decode_steps(s);
  if (dp.size() > 1) return run_dp_steps(o, dp, *run, backend, padded);
  const auto instances = run->instances();
  for (std::size_t l = 0; l < layers.size(); ++l)
    std::printf("layer %-5ld %s\n", static_cast<long>(layers[l].index), instances[l].c_str());
  std::printf("batch       %ld sequences, contexts %d..%d, %ld steps on the %s backend\n", o.tokens,
              s.context_lens.back(), s.context_lens.front(), o.steps,
              std::string(policy::backend_name(backend)).c_str());
  // The device's copy rate, measured in this run: the measure of the rates below.
  const double copy = run->copy_gbs();
  std::printf("copy        %.0f GB/s (%s copy, bytes read + written)\n", copy,
              backend == policy::BackendId::host ? "host memory" : "device-to-device");
  // The time per step, tokens per second, and the rate at which the step moves its byte floor.
  const auto report = [&](const char* what, double ms) {
    const double gbs = run->last_step_bytes().total() / (ms * 1e6);
    std::printf(
        "%-11s %.3f ms per step (mean of back-to-back steps), %.0f tokens/s, floor moved "
        "at %.1f GB/s (%.1f%% of copy)\n",
        what, ms, 1e3 * static_cast<double>(o.tokens) / ms, gbs, 100.0 * gbs / copy);
  };
  // Steps back to back, timed from the first enqueue until the device is idle: what a serving
  // loop sees (on the GPU, launches overlap the device's work when it is the bottleneck).
  const auto timed = [&](long n, auto&& one) {
    run->synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (long k = 0; k < n; ++k) one();
    run->synchronize();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
               .count() /
           static_cast<double>(n);
  };
  if (backend == policy::BackendId::host) {
    report("step", timed(o.steps, [&] { run->step(); }));
  } else {
    // The first step sizes the workspace; then half the rest eager, half replayed from one
    // captured step.
    run->step();
    const long rest = o.steps - 1;
    const long eager = rest - rest / 2;
    if (eager > 0) report("eager", timed(eager, [&] { run->step(); }));
    if (rest / 2 > 0) {
      run->capture();
      report("graph", timed(rest / 2, [&] { run->replay(); }));
    }
  }
  run->synchronize();
  const model::StepBytes floor = run->last_step_bytes();
  std::printf(
      "floor       %.2f MB per step: weights %.2f, cache read %.2f, cache write %.3f, "
      "activations %.3f\n",
      floor.total() / 1e6, floor.weights / 1e6, floor.cache_read / 1e6, floor.cache_write / 1e6,
      floor.activations / 1e6);
  double sum = 0;
  for (const float v : run->hidden()) sum += std::fabs(static_cast<double>(v));
  std::printf("hidden      mean |h| %.4f after %ld steps\n",
              sum / static_cast<double>(o.tokens * m.hidden), static_cast<long>(run->steps_run()));
  report_blocks(*run, copy);
  return 0;
}

int run_checkpoint(const Options& o, const env::Config& config, pipeline::TpComm* gpu_tp) {
  const policy::BackendId backend = tp_backend(o);
  if (!o.input.empty() && o.input == o.output)
    throw std::invalid_argument("--output must not overwrite --input");
  const auto ckpt = model::HfCheckpoint::open(o.checkpoint, io::load_mode(config));
  const pipeline::ModelConfig& m = ckpt.model();
  const auto [first, last] = layer_range(o.layers, m.num_layers);
  std::printf("checkpoint  %s (%s, %ld decoder layers)\n", o.checkpoint.c_str(), m.name.c_str(),
              static_cast<long>(m.num_layers));
  std::vector<std::unique_ptr<pipeline::LayerWeights>> owned;
  std::vector<model::DecodeLayer> layers;
  std::vector<index_t> indices;
  const auto start = std::chrono::steady_clock::now();
  // Under tensor parallelism a GPU rank reads its own share; the host ranks read theirs in
  // decode_checkpoint_tp.
  const pipeline::TpShape rank = pipeline::tp_shape(gpu_tp);
  for (index_t l = first; l < last; ++l) {
    indices.push_back(l);
    if (o.tp > 1 && gpu_tp == nullptr) continue;
    owned.push_back(ckpt.layer(l, rank));
    layers.push_back({l, owned.back().get()});
  }
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (o.steps > 0) {
    if (!o.input.empty() || !o.output.empty())
      throw std::invalid_argument("--steps feeds its own hidden states: no --input or --output");
    std::printf("time        load %.3f s\n", load_s);
    return run_steps(o, config, m, layers);
  }
  std::vector<std::vector<bf16>> inputs;
  if (!o.input.empty()) {
    inputs = read_input(o.input, m.hidden);
  } else {
    std::mt19937_64 rng(static_cast<std::uint64_t>(o.seed));
    std::normal_distribution<float> normal;
    for (const auto len : ragged_contexts(o.tokens, std::min<long>(o.context, m.max_position))) {
      std::vector<bf16> v(static_cast<std::size_t>(len * m.hidden));
      for (auto& x : v) x = to_bf16(normal(rng));
      inputs.push_back(std::move(v));
    }
  }
  const policy::Point point = policy::point_from(config).with(o.kv_cache);
  const auto t0 = std::chrono::steady_clock::now();
  const std::int64_t threshold = config.get<env::Var::dual_stream_moe_token_threshold>();
  std::vector<model::LayerOutput> outputs;
  if (backend == policy::BackendId::gpu) {
#if ATOM_GPU_INSTANCES
    // The staging path: each layer's host weights copied to the device, MXFP4 prepared for the
    // point's GEMM backend.
    std::vector<std::unique_ptr<pipeline::DeviceLayerWeights>> device;
    std::vector<const pipeline::DeviceLayerWeights*> views;
    for (const auto& l : layers) {
      device.push_back(std::make_unique<pipeline::DeviceLayerWeights>(
          m, *l.weights, std::vector{point.get<policy::GemmBackend>()}));
      views.push_back(device.back().get());
    }
    outputs = model::decode_sequences_gpu(m, layers, views, inputs, point, threshold, gpu_tp);
#endif
  } else if (o.tp > 1) {
    outputs = model::decode_checkpoint_tp(ckpt, indices, inputs, point, threshold, o.tp);
  } else {
    outputs = model::decode_sequences(m, layers, inputs, point, threshold);
  }
  const double run_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  long tokens = 0;
  for (const auto& v : inputs) tokens += static_cast<long>(v.size()) / static_cast<long>(m.hidden);
  for (const auto& layer : outputs)
    std::printf("layer %-5ld %s\n", static_cast<long>(layer.index), layer.instances.c_str());
  std::printf(
      "decode      %zu sequences, %ld tokens through layers %ld:%ld on the %s backend, tensor "
      "parallel size %ld\n",
      inputs.size(), tokens, static_cast<long>(first), static_cast<long>(last),
      std::string(policy::backend_name(backend)).c_str(), o.tp);
  std::printf("time        load %.3f s, decode %.3f s\n", load_s, run_s);
  if (!o.output.empty() && rank.rank == 0) {  // the GPU TP ranks all hold the same outputs
    std::vector<io::TensorData> tensors;
    for (const auto& layer : outputs)
      for (std::size_t s = 0; s < inputs.size(); ++s) {
        const auto len =
            static_cast<std::uint64_t>(layer.hidden[s].size() / static_cast<std::size_t>(m.hidden));
        tensors.push_back({"hidden." + std::to_string(s) + ".layer." + std::to_string(layer.index),
                           io::Dtype::F32,
                           {len, static_cast<std::uint64_t>(m.hidden)},
                           std::as_bytes(std::span(layer.hidden[s]))});
        if (!layer.routes.empty())
          tensors.push_back({"route." + std::to_string(s) + ".layer." + std::to_string(layer.index),
                             io::Dtype::I32,
                             {len, static_cast<std::uint64_t>(m.top_k)},
                             std::as_bytes(std::span(layer.routes[s]))});
      }
    io::write_file(o.output, tensors);
    std::printf("output      %s (%zu tensors)\n", o.output.c_str(), tensors.size());
  }
  return 0;
}

// A loopback port that was free a moment ago (the DP store binds it).
std::uint16_t free_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("--dp: socket() failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
  ::close(fd);
  if (!ok) throw std::runtime_error("--dp: no free loopback port");
  return ntohs(addr.sin_port);
}

// This program `n` times (its own arguments, then rank(r)'s), each rank with the environment
// set_env(r) gives; waits for all and returns the largest exit status. With quiet_peers, ranks
// above 0 keep their standard output quiet (rank 0 prints the report), their errors not.
template <class Env, class Args>
int launch_ranks(const Options& o, long n, const Env& set_env, const Args& rank_args,
                 bool quiet_peers) {
  std::fflush(stdout);  // before fork, or every rank inherits the unwritten output
  std::vector<pid_t> ranks;
  for (long r = 0; r < n; ++r) {
    std::vector<std::string> args{"atom-run"};
    args.insert(args.end(), o.args.begin(), o.args.end());
    for (std::string& a : rank_args(r)) args.push_back(std::move(a));
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork() failed");
    if (pid == 0) {
      set_env(r);
      if (quiet_peers && r > 0 && std::freopen("/dev/null", "w", stdout) == nullptr) ::_exit(126);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::perror("atom-run: exec");
      ::_exit(127);
    }
    ranks.push_back(pid);
  }
  int status = 0;
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    int ws = 0;
    ::waitpid(ranks[r], &ws, 0);
    const int rc = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
    if (rc != 0) std::fprintf(stderr, "atom-run: rank %zu exited with status %d\n", r, rc);
    status = std::max(status, rc);
  }
  return status;
}

// --dp N: this program N times as the ranks of one DP group.
int launch_dp(const Options& o, const env::Config& config) {
  if (config.get<env::Var::dp_size>() > 1)
    throw std::invalid_argument("--dp " + std::to_string(o.dp) + " starts its own group, but " +
                                "ATOM_DP_SIZE is already " +
                                std::to_string(config.get<env::Var::dp_size>()));
  if (o.steps == 0)
    throw std::invalid_argument("--dp " + std::to_string(o.dp) +
                                " needs --steps: the ranks decode their batches step by step");
  const std::string port = std::to_string(free_loopback_port());
  const auto env = [&](long r) {
    ::setenv("ATOM_DP_SIZE", std::to_string(o.dp).c_str(), 1);
    ::setenv("ATOM_DP_RANK", std::to_string(r).c_str(), 1);
    ::setenv("ATOM_DP_RANK_LOCAL", std::to_string(r).c_str(), 1);
    ::setenv("ATOM_DP_MASTER_IP", "127.0.0.1", 1);
    ::setenv("ATOM_DP_MASTER_PORT", port.c_str(), 1);
  };
  // Every rank prints its own line of steps.
  return launch_ranks(
      o, o.dp, env, [](long) { return std::vector<std::string>{}; }, false);
}

// --tp N --backend gpu: this program N times, rank r driving GPU r, joined as one TP group
// through the store rank 0 serves on a free loopback port.
int launch_tp_gpu(const Options& o) {
  const std::string port = std::to_string(free_loopback_port());
  return launch_ranks(
      o, o.tp, [](long) {},
      [&](long r) {
        return std::vector<std::string>{"--tp-rank", std::to_string(r), "--tp-port", port};
      },
      true);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    const env::Reading reading = env::Config::read(env::process_environment());
    for (const auto& w : reading.warnings)
      std::fprintf(stderr, "atom-run: warning: %s\n", w.c_str());
    if (!reading.config) {
      for (const auto& e : reading.errors) std::fprintf(stderr, "atom-run: error: %s\n", e.c_str());
      return 2;
    }
    if (o.dp > 1) return launch_dp(o, *reading.config);
    if (o.tp > 1 && tp_backend(o) == policy::BackendId::gpu && o.tp_rank < 0)
      return launch_tp_gpu(o);
    const auto dp_size = reading.config->get<env::Var::dp_size>();
    if (dp_size > 1 && o.steps == 0)
      throw std::invalid_argument("ATOM_DP_SIZE=" + std::to_string(dp_size) +
                                  ": a data-parallel rank decodes its batch with --steps; the "
                                  "block check and the checkpoint decode run alone");
    // A GPU TP rank joins its group once, for every block or layer it runs.
    pipeline::TpComm* gpu_tp = nullptr;
#if ATOM_GPU_INSTANCES
    std::optional<dist::TpGroup> group;
    std::optional<pipeline::GpuTpComm> comm;
    if (o.tp_rank >= 0) {
      dist::TpOptions t =
          dist::tp_options(*reading.config, o.tp_rank, o.tp, static_cast<int>(o.tp_rank));
      t.port = static_cast<std::uint16_t>(o.tp_port);
      group.emplace(t);
      comm.emplace(*group);
      gpu_tp = &*comm;
    }
#endif
    if (!o.checkpoint.empty()) return run_checkpoint(o, *reading.config, gpu_tp);
    if (!o.input.empty() || !o.output.empty())
      throw std::invalid_argument("--input and --output need --checkpoint");
    const pipeline::ModelConfig model = pipeline::preset(o.model);
    if (o.steps > 0) {
      tp_backend(o);
      // Random weights per layer, each from its own seed.
      const auto [first, last] = layer_range(o.layers.empty() ? "1" : o.layers, model.num_layers);
      std::vector<std::unique_ptr<pipeline::LayerWeights>> owned;
      std::vector<model::DecodeLayer> layers;
      if (reading.config->get<env::Var::dp_rank>() == 0)
        std::printf("weights     generating %ld layers of %s (seed %ld)...\n",
                    static_cast<long>(last - first), model.name.c_str(), o.seed);
      std::fflush(stdout);
      const auto generating = std::chrono::steady_clock::now();
      for (index_t l = first; l < last; ++l) {
        owned.push_back(std::make_unique<pipeline::LayerWeights>(
            model, static_cast<std::uint64_t>(o.seed + l)));
        layers.push_back({l, owned.back().get()});
      }
      if (reading.config->get<env::Var::dp_rank>() == 0) report_generated(generating);
      return run_steps(o, *reading.config, model, layers);
    }
    if (!o.layers.empty()) throw std::invalid_argument("--layers needs --checkpoint or --steps");
    int status = 0;
    bool first = true;
    for (const PipelineId p : pipelines_for(o.pipeline, model)) {
      if (!pipeline::pipeline_fits(p, model))
        throw std::invalid_argument("pipeline '" + o.pipeline + "' does not apply to model " +
                                    model.name);
      if (!first) std::printf("\n");
      first = false;
      int rc = 2;
      switch (p) {
        case PipelineId::mla_attention:
          rc = run<PipelineId::mla_attention>(o, *reading.config, model, gpu_tp);
          break;
        case PipelineId::moe_block:
          rc = run<PipelineId::moe_block>(o, *reading.config, model, gpu_tp);
          break;
        case PipelineId::qwen3_attention:
          rc = run<PipelineId::qwen3_attention>(o, *reading.config, model, gpu_tp);
          break;
        case PipelineId::dense_mlp:
          rc = run<PipelineId::dense_mlp>(o, *reading.config, model, gpu_tp);
          break;
      }
      status = std::max(status, rc);
    }
    return status;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr,
                 "atom-run: out of host memory (a full-size preset holds one layer's weights per "
                 "layer run: --layers and --tokens size it)\n");
    return 1;
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "atom-run: %s\n", e.what());
    std::fputs(usage, stderr);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "atom-run: %s\n", e.what());
    return 1;
  }
  return 2;
}
