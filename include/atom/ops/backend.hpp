// Backend tags. Every op is a free function whose first parameter names the backend it runs on;
// the host backend is the reference that defines each op's semantics, and a device backend adds
// overloads with the same remaining parameters after its own tag.
#pragma once

namespace atom::ops {

// Plain C++ on the calling thread; views point at host memory.
struct Host {};

}  // namespace atom::ops
