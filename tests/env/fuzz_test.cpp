#include <catch2/catch.hpp>

#include <random>
#include <string>

#include "atom/env/config.hpp"

using namespace atom::env;

namespace {

// Random strings biased towards the interesting neighbourhood of valid values.
std::string random_value(std::mt19937_64& rng) {
  static const std::string seeds[] = {"1",     "0",         "true", "off",
                                      "YES",   "-",         "+",    "65535",
                                      "29500", "127.0.0.1", "::1",  "9223372036854775808",
                                      " ",     "\xff"};
  std::uniform_int_distribution<int> kind(0, 3);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<std::size_t> len(0, 24);
  std::string s;
  switch (kind(rng)) {
    case 0:  // arbitrary bytes
      for (std::size_t i = len(rng); i > 0; --i) s += static_cast<char>(byte(rng));
      break;
    case 1:  // digits with a sign now and then
      if (byte(rng) < 40) s += (byte(rng) & 1) ? '-' : '+';
      for (std::size_t i = len(rng); i > 0; --i) s += static_cast<char>('0' + byte(rng) % 10);
      break;
    case 2:  // a seed with one byte changed, added or removed
      s = seeds[static_cast<std::size_t>(byte(rng)) % std::size(seeds)];
      if (!s.empty())
        s[static_cast<std::size_t>(byte(rng)) % s.size()] = static_cast<char>(byte(rng));
      break;
    default:  // a seed as is
      s = seeds[static_cast<std::size_t>(byte(rng)) % std::size(seeds)];
  }
  return s;
}

}  // namespace

TEST_CASE("thousands of random values give a value or an error, never a crash") {
  std::mt19937_64 rng(Catch::rngSeed());
  std::size_t ok = 0;
  std::size_t bad = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    for (const auto& s : registry) {
      const std::string v = random_value(rng);
      const Reading r = Config::read({{std::string(s.name), v}});
      // Exactly one of: a config, or at least one error.
      REQUIRE(r.config.has_value() == r.errors.empty());
      if (r.config) {
        ++ok;
        if (!v.empty()) REQUIRE(r.config->source(s.id) == Source::environment);
      } else {
        ++bad;
        for (const auto& e : r.errors) REQUIRE_THAT(e, Catch::Contains(std::string(s.name)));
      }
    }
  }
  CHECK(ok > 1000);
  CHECK(bad > 1000);
}
