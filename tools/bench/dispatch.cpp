// The cost of dispatch: resolving a Config to a handle (once per Config), and a call through the
// handle against a direct call of the same function (one indirect call).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "atom/dispatch/dispatch.hpp"

namespace {

using atom::policy::PipelineId;
using Args = atom::pipeline::RunArgs<PipelineId::moe_block>;

volatile long sink = 0;

// The callee does the least possible work so that only the call itself is measured.
__attribute__((noinline)) void callee(const Args& a) {
  sink = sink + a.dual_stream_threshold;
}

template <class F>
double median_ns_per_call(F&& f, int calls) {
  std::vector<double> runs;
  for (int r = 0; r < 15; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) f();
    const auto t1 = std::chrono::steady_clock::now();
    runs.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / calls);
  }
  std::sort(runs.begin(), runs.end());
  return runs[runs.size() / 2];
}

}  // namespace

int main() {
  constexpr int calls = 20'000'000;
  Args args;
  args.dual_stream_threshold = 1;
  const atom::dispatch::Handle<PipelineId::moe_block> handle(
      &callee, "callee", atom::policy::BackendId::host, atom::policy::Point{});
  // Keep the compiler from seeing through the handle.
  const auto* volatile handle_ptr = &handle;
  const double direct = median_ns_per_call([&] { callee(args); }, calls);
  const double through = median_ns_per_call([&] { (*handle_ptr)(args); }, calls);

  const atom::env::Config config;
  const double resolve = median_ns_per_call(
      [&] {
        const auto h = atom::dispatch::resolve<PipelineId::mla_attention>(
            config, atom::policy::BackendId::host);
        sink = sink + static_cast<long>(h.name().size());
      },
      200'000);
  std::printf("direct call            %6.2f ns\n", direct);
  std::printf("call through handle    %6.2f ns  (+%.2f ns)\n", through, through - direct);
  std::printf("resolve(Config)        %6.2f ns  (once per Config, mla_attention table of %zu)\n",
              resolve, atom::dispatch::table<PipelineId::mla_attention>().size());
  return 0;
}
