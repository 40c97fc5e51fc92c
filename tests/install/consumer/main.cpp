#include <cstdio>

#include "atom/env/config.hpp"

int main() {
  const auto config = atom::env::Config::from_process();
  const bool triton = config.get<atom::env::Var::use_triton_gemm>();
  std::printf("consumer: ATOM_USE_TRITON_GEMM=%s from the %s\n", triton ? "true" : "false",
              config.source(atom::env::Var::use_triton_gemm) == atom::env::Source::environment
                  ? "environment"
                  : "default");
  return 0;
}
