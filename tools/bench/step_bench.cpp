// Whole decode steps of a model's MoE decoder layers (model/step.hpp), as an engine runs them:
// T sequences of one query token each, every context of the same length, through L layers, the
// step captured once as a graph and replayed (the GPU; the host runs steps eagerly). Per shape it
// prints the median time of a step (device events around each replay), per layer, the step's
// byte floor as atom computes it from the point, the weight format and the batch (model::StepBytes:
// the weights of the experts the tokens chose, the cache rows attended to and written, the hidden
// states), the rate that floor is moved at and its fraction of the copy rate measured in the same
// run, the floor's own time at that copy rate, and tokens/s.
//
// L is as many layers as fit the device next to the caches of the largest shape asked for (or
// --layers). One layer of random weights is drawn on the host and copied to the device once per
// layer: each layer reads its own memory, so the L2 cache cannot carry weights from one layer to
// the next (it holds addresses, not values), and the routes differ per layer because each layer's
// input does. The contexts grow by one per step over the run (2 + warm-up + replays steps).
// tools/bench/step_bench_torch.py times the PyTorch peer on the same shapes; step_plot.py draws
// both against the byte floor.
//
// Usage: atom-bench-step [--model M[,M...]] [--tokens 1,4,16,64,256] [--contexts 512,4096,16384]
//                        [--layers N] [--replays R] [--kv-cache fp8_row|fp8_tensor|bf16]
//                        [--csv FILE]
// (--kv-cache: the Qwen3 models' cache format; the PyTorch peer's cache is bf16.)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "atom/env/config.hpp"
#include "atom/gpu/device.hpp"
#include "atom/model/step.hpp"
#include "atom/pipeline/storage.hpp"
#if ATOM_GPU_INSTANCES
#include "atom/model/decode_gpu.hpp"
#include "atom/pipeline/device_storage.hpp"
#endif

namespace {

using namespace atom;

constexpr int warmup_replays = 3;

struct Options {
  std::vector<std::string> models{"deepseek-v3", "qwen3-30b-a3b"};
  std::vector<long> tokens{1, 4, 16, 64, 256};
  std::vector<long> contexts{512, 4096, 16384};
  long layers = 0;  // 0: as many as fit
  int replays = 20;
  ops::KvCacheFormat kv_cache = ops::KvCacheFormat::fp8_row;
  std::string csv;
};

std::vector<std::string> split(std::string_view s) {
  std::vector<std::string> out;
  while (!s.empty()) {
    const auto comma = s.find(',');
    out.emplace_back(s.substr(0, comma));
    s = comma == std::string_view::npos ? std::string_view{} : s.substr(comma + 1);
  }
  return out;
}

long number(std::string_view flag, const std::string& v, long lo, long hi) {
  std::size_t used = 0;
  long n = 0;
  try {
    n = std::stol(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || n < lo || n > hi)
    throw std::invalid_argument(std::string(flag) + ": '" + v + "' is not a number in " +
                                std::to_string(lo) + ".." + std::to_string(hi));
  return n;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument(std::string(flag) + " needs a value");
    const std::string value = argv[++i];
    const auto numbers = [&](long lo, long hi) {
      std::vector<long> out;
      for (const auto& v : split(value)) out.push_back(number(flag, v, lo, hi));
      if (out.empty()) throw std::invalid_argument(std::string(flag) + " needs a value");
      return out;
    };
    if (flag == "--model")
      o.models = split(value);
    else if (flag == "--tokens")
      o.tokens = numbers(1, 4096);
    else if (flag == "--contexts")
      o.contexts = numbers(1, 1 << 20);
    else if (flag == "--layers")
      o.layers = number(flag, value, 1, 1024);
    else if (flag == "--replays")
      o.replays = static_cast<int>(number(flag, value, 1, 10000));
    else if (flag == "--kv-cache")
      o.kv_cache = ops::kv_cache_format_named(flag, value);
    else if (flag == "--csv")
      o.csv = value;
    else
      throw std::invalid_argument("unknown flag " + std::string(flag));
  }
  for (const auto& m : o.models) static_cast<void>(pipeline::preset(m));  // names checked first
  return o;
}

// The first MoE layer of the model: every layer benchmarked is of its kind.
index_t first_moe_layer(const pipeline::ModelConfig& m) {
  for (index_t l = 0; l < m.num_layers; ++l)
    if (pipeline::layer_kind(m, l) == pipeline::LayerKind::moe) return l;
  throw std::invalid_argument(m.name + " has no MoE layer");
}

// Bytes of one layer's cache for `tokens` sequences of `context` rows (and the steps' growth).
double cache_bytes(const pipeline::ModelConfig& m, long tokens, long context, long steps,
                   ops::KvCacheFormat f) {
  const double rows =
      static_cast<double>(tokens) *
      static_cast<double>(((context + steps + m.block_size - 1) / m.block_size) * m.block_size);
  return rows * model::cache_row_bytes(m, f);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Row {
  std::string model, backend;
  long layers, tokens, context;
  double step_ms, bytes, copy_gbs;
};

void print(const Row& r, std::FILE* to, bool csv) {
  const double gbs = r.bytes / (r.step_ms * 1e6);
  const double floor_ms = r.bytes / (r.copy_gbs * 1e6);
  const double per_layer = r.step_ms / static_cast<double>(r.layers);
  const double tps = 1e3 * static_cast<double>(r.tokens) / r.step_ms;
  if (csv)
    std::fprintf(to, "%s,%s,%ld,%ld,%ld,%.4f,%.4f,%.3f,%.1f,%.4f,%.4f,%.0f\n", r.model.c_str(),
                 r.backend.c_str(), r.layers, r.tokens, r.context, r.step_ms, per_layer,
                 r.bytes / 1e6 / static_cast<double>(r.layers), gbs, gbs / r.copy_gbs,
                 floor_ms / static_cast<double>(r.layers), tps);
  else
    std::fprintf(to, "%-14s %6ld %5ld %7ld %10.3f %9.4f %10.2f %9.1f %7.1f%% %9.4f %10.0f\n",
                 r.model.c_str(), r.layers, r.tokens, r.context, r.step_ms, per_layer,
                 r.bytes / 1e6 / static_cast<double>(r.layers), gbs, 100.0 * gbs / r.copy_gbs,
                 floor_ms / static_cast<double>(r.layers), tps);
}

constexpr const char* csv_header =
    "model,backend,layers,T,ctx,ms_step,ms_layer,MB_layer,GB_s,of_copy,floor_ms_layer,tokens_s\n";

// The layers' weights on the steps' backend: the host layer itself, or a device copy per layer.
struct Weights {
  std::unique_ptr<pipeline::LayerWeights> host;
#if ATOM_GPU_INSTANCES
  std::vector<std::unique_ptr<pipeline::DeviceLayerWeights>> device;
#endif
};

std::unique_ptr<model::DecodeSteps> make_steps(const model::StepSetup& s, const Weights& w,
                                               bool gpu) {
#if ATOM_GPU_INSTANCES
  if (gpu) {
    std::vector<const pipeline::DeviceLayerWeights*> views;
    for (std::size_t l = 0; l < s.layers.size(); ++l) views.push_back(w.device[l].get());
    return model::decode_steps_gpu(s, views);
  }
#else
  static_cast<void>(w);
  static_cast<void>(gpu);
#endif
  return model::decode_steps(s);
}

// The median time of one step: graph replays timed with device events, or eager host steps.
double time_step(model::DecodeSteps& run, bool gpu, int replays) {
  run.step();  // sizes the workspace and the kernels' scratch
  std::vector<double> ms;
  if (gpu) {
    run.capture();
    for (int i = 0; i < warmup_replays; ++i) run.replay();
    gpu::StreamMarks marks(run.stream());
    for (int i = 0; i < replays; ++i) {
      marks.mark();
      run.replay();
    }
    marks.mark();
    ms = marks.intervals_ms();
  } else {
    for (int i = 0; i < replays; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      run.step();
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
  }
  run.synchronize();
  return median(ms);
}

int run(const Options& o) {
  const bool gpu = ATOM_GPU_INSTANCES != 0 && gpu::device_count() > 0;
  const env::Config config = env::Config::from_process();
  std::FILE* csv = nullptr;
  if (!o.csv.empty()) {
    csv = std::fopen(o.csv.c_str(), "w");
    if (csv == nullptr) throw std::runtime_error("cannot write " + o.csv);
    std::fputs(csv_header, csv);
  }
  std::printf("backend: %s%s\n", gpu ? "gpu, " : "host (this build or machine has no GPU)",
              gpu ? gpu::device_name(0).c_str() : "");
  const long steps = 2 + warmup_replays + o.replays;
  for (const std::string& name : o.models) {
    const pipeline::ModelConfig m = pipeline::preset(name);
    const index_t first = first_moe_layer(m);
    const auto t0 = std::chrono::steady_clock::now();
    Weights w;
    w.host = std::make_unique<pipeline::LayerWeights>(m, 1);
    const double drawn =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    model::StepSetup s;
    s.model = &m;
    s.point = policy::point_from(config).with(o.kv_cache);
    s.dual_stream_threshold = config.get<env::Var::dual_stream_moe_token_threshold>();
    s.steps = steps;
    const long max_tokens = *std::max_element(o.tokens.begin(), o.tokens.end());
    const long max_context = *std::max_element(o.contexts.begin(), o.contexts.end());
    const double largest_cache = cache_bytes(m, max_tokens, max_context, steps, o.kv_cache);
    long layers = m.num_layers - first;
    if (o.layers > layers)
      throw std::invalid_argument("--layers " + std::to_string(o.layers) + ": " + name + " has " +
                                  std::to_string(layers) + " MoE layers");
    if (o.layers > 0) layers = o.layers;
#if ATOM_GPU_INSTANCES
    if (gpu) {
      // The first copy measures a layer's device bytes; the rest are made while they fit.
      const auto backends = std::vector{s.point.get<policy::GemmBackend>()};
      const std::size_t before = gpu::memory_info().free_bytes;
      w.device.push_back(std::make_unique<pipeline::DeviceLayerWeights>(m, *w.host, backends));
      const double layer_bytes = static_cast<double>(before - gpu::memory_info().free_bytes);
      const double per_layer = layer_bytes + largest_cache;
      const double room = 0.9 * static_cast<double>(before) - (4.0 * (1 << 30));
      if (o.layers == 0) layers = std::clamp<long>(static_cast<long>(room / per_layer), 1, layers);
      while (static_cast<long>(w.device.size()) < layers)
        w.device.push_back(std::make_unique<pipeline::DeviceLayerWeights>(m, *w.host, backends));
      std::printf(
          "%s: %ld MoE layers (from layer %ld), %.2f GB of device weights each, %.1f s "
          "to draw one layer on the host\n",
          name.c_str(), layers, static_cast<long>(first), layer_bytes / 1e9, drawn);
    }
#endif
    if (!gpu)
      std::printf(
          "%s: %ld MoE layers (from layer %ld), the same host weights, %.1f s to draw; "
          "%.2f GB of cache per layer at the largest shape\n",
          name.c_str(), layers, static_cast<long>(first), drawn, largest_cache / 1e9);
    s.layers.clear();
    for (long l = 0; l < layers; ++l) s.layers.push_back({first + l, w.host.get()});
    // The copy rate of this run, measured once per model on a step's own backend.
    double copy = 0;
    std::printf("%-14s %6s %5s %7s %10s %9s %10s %9s %8s %9s %10s\n", "model", "layers", "T", "ctx",
                "ms/step", "ms/layer", "MB/layer", "GB/s", "of copy", "floor ms", "tokens/s");
    for (const long context : o.contexts)
      for (const long tokens : o.tokens) {
        s.context_lens.assign(static_cast<std::size_t>(tokens), static_cast<std::int32_t>(context));
        auto steps_run = make_steps(s, w, gpu);
        if (copy == 0) copy = steps_run->copy_gbs();
        const double ms = time_step(*steps_run, gpu, o.replays);
        const Row row{name,
                      gpu ? "gpu" : "host",
                      layers,
                      tokens,
                      context,
                      ms,
                      steps_run->last_step_bytes().total(),
                      copy};
        print(row, stdout, false);
        if (csv != nullptr) print(row, csv, true);
        std::fflush(stdout);
      }
    std::printf("copy rate of this run: %.0f GB/s\n", copy);
  }
  if (csv != nullptr) std::fclose(csv);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "atom-bench-step: %s\n", e.what());
    return 1;
  }
}
