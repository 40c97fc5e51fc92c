// The entry point of libatom_plugin.so (ATOM_PLUGIN_PATH), dlopened once, for the C++ tests of
// the plugin: they see it as a host does, its own copy of atom inside.
#pragma once

#include <dlfcn.h>

#include <cstring>
#include <stdexcept>
#include <string>

#include "atom/plugin/atom_plugin.h"

inline atom_plugin_get_api_fn plugin_entry() {
  static const atom_plugin_get_api_fn fn = [] {
    void* lib = dlopen(ATOM_PLUGIN_PATH, RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) throw std::runtime_error(std::string("dlopen: ") + dlerror());
    void* sym = dlsym(lib, ATOM_PLUGIN_ENTRY_POINT);
    if (sym == nullptr) throw std::runtime_error(std::string("dlsym: ") + dlerror());
    atom_plugin_get_api_fn f = nullptr;
    std::memcpy(&f, &sym, sizeof sym);
    return f;
  }();
  return fn;
}

// The function table of `version`; throws with the plugin's message when it is refused.
inline const atom_plugin_api& plugin_table(std::uint32_t version) {
  const atom_plugin_api* a = nullptr;
  const char* error = nullptr;
  if (plugin_entry()(version, &a, &error) != ATOM_PLUGIN_OK) throw std::runtime_error(error);
  return *a;
}
