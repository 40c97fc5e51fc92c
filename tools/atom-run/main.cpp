// atom-run: resolves the ATOM_* environment to an instantiation, runs it on a decode batch of a
// model preset, checks it against the all-separate reference and prints the error and timings.
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "atom/dispatch/dispatch.hpp"
#include "atom/gpu/device.hpp"
#include "atom/pipeline/harness.hpp"
#if ATOM_GPU_INSTANCES
#include "atom/pipeline/harness_gpu.hpp"
#endif

namespace {

using namespace atom;
using policy::PipelineId;

constexpr const char* usage =
    "usage: atom-run [--model NAME] [--pipeline mla|moe|qwen3-attn|layer] [--tokens N]\n"
    "                [--context L] [--iters K] [--seed S] [--backend auto|host|gpu]\n"
    "  --model     deepseek-v3-tiny (default), qwen3-30b-a3b-tiny, deepseek-v3, qwen3-30b-a3b\n"
    "  --pipeline  layer (default: the model's attention block then its MoE block), mla, moe,\n"
    "              qwen3-attn\n"
    "  --tokens    decode tokens in the batch (default 4), each with its own context length\n"
    "  --context   longest context (default 64); token i gets a length between L/2 and L\n"
    "  --iters     timed runs after the checked one (default 3)\n"
    "  --backend   auto (default: gpu when this build has GPU instantiations and a GPU is\n"
    "              present, else host), host, gpu. A GPU run is checked against the host\n"
    "              instantiation of the same point.\n"
    "The ATOM_* variables pick the instantiation (atom-env --instances lists them).\n";

struct Options {
  std::string model = "deepseek-v3-tiny";
  std::string pipeline = "layer";
  long tokens = 4;
  long context = 64;
  long iters = 3;
  long seed = 1;
  std::string backend = "auto";
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
    else
      throw std::invalid_argument("unknown option " + std::string(flag));
  }
  return o;
}

PipelineId pipeline_for(std::string_view name, const pipeline::ModelConfig& m) {
  const bool mla = m.attention == pipeline::AttentionKind::mla;
  if (name == "layer") return mla ? PipelineId::ds_layer : PipelineId::qwen3_layer;
  if (name == "moe") return PipelineId::moe_block;
  if (name == "mla") return PipelineId::mla_attention;
  if (name == "qwen3-attn") return PipelineId::qwen3_attention;
  throw std::invalid_argument("unknown pipeline '" + std::string(name) +
                              "'; expected mla, moe, qwen3-attn or layer");
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

template <PipelineId P>
int run(const Options& o, const env::Config& config, const pipeline::ModelConfig& model) {
  const policy::BackendId backend = backend_for(o.backend);
  const bool on_gpu = backend == policy::BackendId::gpu;
  const auto handle = dispatch::resolve<P>(config, backend);
  const std::string reference =
      on_gpu ? policy::instance_name(P, policy::BackendId::host, handle.point())
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

  std::printf("weights     generating (seed %ld)...\n", o.seed);
  std::fflush(stdout);
  const pipeline::LayerWeights weights(model, static_cast<std::uint64_t>(o.seed));
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
    const pipeline::DeviceLayerWeights device(model, weights, {point.get<policy::GemmBackend>()});
    check = pipeline::check_against_host(handle, in, device);
    const int calls = static_cast<int>(std::max(1L, o.iters));
    median_seconds = pipeline::run_once_gpu(handle, in, device, calls).seconds;
    runs = static_cast<std::size_t>(calls);
#endif
  } else {
    pipeline::RunOutput got;
    check = pipeline::check_against_reference(handle, in, &got);
    std::vector<double> times{got.seconds};
    for (long i = 0; i < o.iters; ++i) {
      times.push_back(pipeline::run_once(handle, in).seconds);
      if (o.iters >= 10 && (i + 1) % (o.iters / 10) == 0)
        std::fprintf(stderr, "\rtiming      %ld/%ld%s", i + 1, o.iters,
                     i + 1 == o.iters ? "\n" : "");
    }
    std::sort(times.begin(), times.end());
    median_seconds = times[times.size() / 2];
    runs = times.size();
  }
  const bool layer = P == PipelineId::ds_layer || P == PipelineId::qwen3_layer;
  std::printf("check       residual %.3e vs reference (bound %.2g); out %.3e vs %s %s\n",
              check.residual_error, check.bound, check.out_error,
              layer ? "its attention and MoE blocks chained (exact)" : "reference",
              check.ok ? "ok" : "FAILED");
  std::printf("time        median %.3f ms over %zu runs on the %s backend%s\n",
              1e3 * median_seconds, runs, on_gpu ? "gpu" : "host",
              on_gpu ? " (device events, warm workspace)" : "");
  return check.ok ? 0 : 1;
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
    const pipeline::ModelConfig model = pipeline::preset(o.model);
    const PipelineId p = pipeline_for(o.pipeline, model);
    if (!pipeline::pipeline_fits(p, model))
      throw std::invalid_argument("pipeline '" + o.pipeline + "' does not apply to model " +
                                  model.name);
    switch (p) {
      case PipelineId::mla_attention:
        return run<PipelineId::mla_attention>(o, *reading.config, model);
      case PipelineId::moe_block:
        return run<PipelineId::moe_block>(o, *reading.config, model);
      case PipelineId::qwen3_attention:
        return run<PipelineId::qwen3_attention>(o, *reading.config, model);
      case PipelineId::ds_layer:
        return run<PipelineId::ds_layer>(o, *reading.config, model);
      case PipelineId::qwen3_layer:
        return run<PipelineId::qwen3_layer>(o, *reading.config, model);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "atom-run: %s\n", e.what());
    std::fputs(usage, stderr);
    return 2;
  }
  return 2;
}
