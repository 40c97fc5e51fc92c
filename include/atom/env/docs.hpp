// Text generated from the registry: the docs table and the resolved-config listing.
#pragma once

#include <string>

#include "atom/env/config.hpp"

namespace atom::env {

// The Markdown table of every variable: name, type, default, accepted values, what it feeds, doc.
std::string markdown_table();

// One line per variable: name, resolved value, and where the value came from.
std::string describe(const Config& config, const Environment& env);

}  // namespace atom::env
