// Resolving a Config to an instantiation: exact-key lookup in the generated table, once per
// Config, into a handle whose call costs one indirect call. A miss is a DispatchError that names
// the requested point, the axis whose value has no instantiation, and what is available.
#pragma once

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "atom/dispatch/table.hpp"
#include "atom/env/config.hpp"
#include "atom/extend/rows.hpp"

namespace atom::dispatch {

template <policy::PipelineId P>
class Handle {
 public:
  Handle(RunFn<P> run, std::string_view name, policy::BackendId backend, policy::Point point)
      : run_(run), name_(name), backend_(backend), point_(point) {}

  void operator()(const pipeline::RunArgs<P>& args) const { run_(args); }
  std::string_view name() const { return name_; }
  policy::BackendId backend() const { return backend_; }
  policy::Point point() const { return point_; }

 private:
  RunFn<P> run_;
  std::string_view name_;
  policy::BackendId backend_;
  policy::Point point_;
};

// Explains a miss: the first axis whose requested value no entry has, or the combination.
std::string miss_message(policy::PipelineId p, policy::BackendId b, policy::Point x,
                         const std::vector<std::pair<policy::Key, std::string_view>>& available);

template <policy::PipelineId P>
const Entry<P>* find(policy::Key k) {
  const auto rows = table<P>();
  const auto it = std::lower_bound(rows.begin(), rows.end(), k,
                                   [](const Entry<P>& e, policy::Key key) { return e.key < key; });
  return (it != rows.end() && it->key == k) ? &*it : nullptr;
}

// The instance of pipeline P at point x on backend b: atom's own where every extension axis that
// an instance of P reads is at its first value, else the extension's (atom/extend).
template <policy::PipelineId P>
Handle<P> resolve_point(policy::Point x, policy::BackendId b) {
  using Args = pipeline::RunArgs<P>;
  x = policy::canonical(P, x);
  if (const auto* r = extend::extension_row<Args>(policy::pipeline_name(P), policy::reads(P), b, x))
    return Handle<P>(r->run, r->name, b, x);
  if (const Entry<P>* e = find<P>(policy::key(P, b, x))) return Handle<P>(e->run, e->name, b, x);
  std::vector<std::pair<policy::Key, std::string_view>> available;
  for (const auto& e : table<P>()) available.emplace_back(e.key, e.name);
  throw DispatchError(miss_message(P, b, x, available));
}

// The instantiation the variables of `config` select for pipeline P on backend b.
template <policy::PipelineId P>
Handle<P> resolve(const env::Config& config, policy::BackendId b) {
  return resolve_point<P>(policy::point_from(config), b);
}

}  // namespace atom::dispatch
