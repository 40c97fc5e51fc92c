// What both generators (atom-codegen for atom's instances, atom/extend/generate.hpp for an
// extension's) need of names and files.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <string_view>

namespace atom::codegen {

// Names end up in file names, C++ identifiers and CMake patterns: [a-z0-9_], not empty.
inline bool plain_name(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// An instance name ("<pipeline>.<backend>.<tag>-<value>...") as a C++ identifier.
inline std::string identifier(std::string name) {
  for (char& c : name)
    if (c == '.' || c == '-') c = '_';
  return name;
}

// Writes the file only when its content differs (a regeneration then rebuilds nothing); returns
// whether it wrote.
inline bool write_if_changed(const std::filesystem::path& path, const std::string& content) {
  {
    std::ifstream in(path, std::ios::binary);
    if (in) {
      const std::string old((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (old == content) return false;
    }
  }
  std::filesystem::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
  if (!out) throw std::runtime_error("cannot write " + path.string());
  return true;
}

}  // namespace atom::codegen
