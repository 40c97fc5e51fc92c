// The data-parallel group of engine ranks. Every step the ranks agree on whether any of them
// still has work (idle ranks then run a dummy batch) and on the token count every rank pads its
// MoE and graph batch to. Rank 0 serves the rendezvous store at ATOM_DP_MASTER_IP:PORT; the
// collectives run on gloo over TCP. Every failure (bad configuration, a peer that never
// arrives, dies or disagrees) is a DistError on every surviving rank within the timeout.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "atom/dist/rendezvous.hpp"
#include "atom/env/config.hpp"

namespace atom::dist {

struct DpGroupOptions {
  // Bounds joining (connect, rendezvous, transport setup), each collective, and shutdown.
  std::chrono::milliseconds timeout{30000};
};

// The per-step flags every rank contributes; after sync_step each is the OR over ranks.
struct StepState {
  bool has_unfinished = false;
  bool shutdown = false;
  friend bool operator==(const StepState&, const StepState&) = default;
};

// One rank's batch for this step.
struct RankBatch {
  std::int64_t num_tokens = 0;
  bool is_prefill = false;
  friend bool operator==(const RankBatch&, const RankBatch&) = default;
};

enum class BatchShape : std::uint8_t {
  uniform_decode,  // every rank decodes: one token per sequence, graph-capturable
  ragged,          // some rank prefills: per-token context lengths differ
};

// What every rank runs this step: its batch padded to `padded_tokens` (the maximum over ranks).
struct PaddingDecision {
  std::int64_t padded_tokens = 0;
  BatchShape shape = BatchShape::uniform_decode;
  friend bool operator==(const PaddingDecision&, const PaddingDecision&) = default;
};

// The padding every rank must apply, from every rank's batch; throws std::invalid_argument on an
// empty list or a negative token count (naming the rank).
PaddingDecision decide_padding(std::span<const RankBatch> batches);

// Everything a step needs, exchanged in one collective.
struct StepPlan {
  StepState state;
  std::vector<RankBatch> batches;
  PaddingDecision padding;
  // Some rank has work and this one has no tokens: it runs a dummy batch of padded_tokens so
  // that the MoE collectives of the others do not wait for it.
  bool run_dummy_batch = false;
};

// One DP group per process, used from one thread at a time. Joining a group of more than one
// rank sets SIGPIPE to ignored if it was at its default, so a peer that dies is an error here
// rather than a signal that kills this rank.
class DpGroup {
 public:
  // The most values one sync_state call carries.
  static constexpr std::size_t max_state_values = 6;

  // Joins the group described by the config's ATOM_DP_* values. With ATOM_DP_SIZE=1 nothing is
  // opened and every collective is the identity.
  explicit DpGroup(const env::Config& config, DpGroupOptions options = {});
  ~DpGroup();
  DpGroup(const DpGroup&) = delete;
  DpGroup& operator=(const DpGroup&) = delete;

  std::int64_t rank() const noexcept;
  std::int64_t size() const noexcept;
  // The GPU this rank drives on its node (ATOM_DP_RANK_LOCAL).
  std::int64_t device_index() const noexcept;

  // All-reduce MAX in place. Every rank must pass the same number of values (at most
  // max_state_values); a mismatch is an error on every rank.
  void sync_state(std::span<std::int64_t> values);
  StepState sync_step(StepState local);
  // Every rank's batch, indexed by rank. A negative token count is an error on every rank.
  std::vector<RankBatch> gather_token_counts(RankBatch local);
  // sync_step, gather_token_counts and decide_padding in one collective.
  StepPlan exchange_step(StepState local_state, RankBatch local_batch);

  void barrier();
  // Waits for every rank to arrive, then closes the group. Afterwards every collective throws.
  // The destructor closes without waiting: peers still in a collective then get an error.
  void shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace atom::dist
