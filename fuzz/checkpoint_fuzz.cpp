// libFuzzer target: the mapping of a checkpoint's tensors to pipeline weights. The input picks one
// of the committed tiny checkpoints (tests/model/hf) and mutates its tensors: each tensor, in
// name order, takes one input byte that keeps it, drops it, renames it, changes its dtype, or
// grows or shrinks a dimension (contents zero). The result is written as a checkpoint and every
// decoder layer is loaded. Anything but weights, or a LoadError / ConfigError / ShapeError naming
// what is wrong, is a finding.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "atom/io/writer.hpp"
#include "atom/model/checkpoint.hpp"
#include "atom/model/hf_config.hpp"

namespace {

namespace fs = std::filesystem;
using namespace atom;

struct Base {
  fs::path dir;
  std::vector<io::TensorInfo> tensors;
};

const std::vector<Base>& bases() {
  static const std::vector<Base> b = [] {
    std::vector<Base> out;
    for (const char* model : {"deepseek-v3-tiny", "qwen3-30b-a3b-tiny"})
      for (const char* format : {"bf16", "fp8", "mxfp4"}) {
        Base base{fs::path(ATOM_FUZZ_HF_DATA) / model / format, {}};
        const auto c = io::Checkpoint::open(base.dir);
        for (const auto& name : c.names()) base.tensors.push_back(c.info(name));
        out.push_back(std::move(base));
      }
    return out;
  }();
  return b;
}

constexpr io::Dtype dtypes[] = {io::Dtype::BF16, io::Dtype::F32, io::Dtype::F8_E4M3,
                                io::Dtype::U8,   io::Dtype::F16, io::Dtype::I32};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const Base& base = bases()[data[0] % bases().size()];
  std::vector<io::TensorData> tensors;
  std::vector<std::vector<std::byte>> storage;
  storage.reserve(base.tensors.size());
  for (std::size_t i = 0; i < base.tensors.size(); ++i) {
    const io::TensorInfo& t = base.tensors[i];
    const std::uint8_t op = i + 1 < size ? data[i + 1] : 0;
    io::TensorData d{t.name, t.dtype, t.shape, {}};
    switch (op % 16) {
      case 1:
        continue;  // dropped
      case 2:
        d.name += "_";
        break;
      case 3:
        d.dtype = dtypes[(op / 16) % std::size(dtypes)];
        break;
      case 4:
        if (!d.shape.empty()) d.shape[(op / 16) % d.shape.size()] += 1;
        break;
      case 5:
        if (!d.shape.empty() && d.shape[(op / 16) % d.shape.size()] > 1)
          d.shape[(op / 16) % d.shape.size()] -= 1;
        break;
      case 6:
        d.shape.push_back(1);
        break;
      default:
        break;
    }
    std::uint64_t n = 1;
    for (const auto s : d.shape) n *= s;
    storage.emplace_back((n * io::dtype_bits(d.dtype) + 7) / 8);
    d.bytes = storage.back();
    tensors.push_back(std::move(d));
  }
  static const fs::path dir = [] {
    fs::path p = fs::temp_directory_path() / ("atom-checkpoint-fuzz-" + std::to_string(getpid()));
    fs::create_directories(p);
    return p;
  }();
  fs::copy_file(base.dir / "config.json", dir / "config.json",
                fs::copy_options::overwrite_existing);
  try {
    io::write_file(dir / "model.safetensors", tensors);
  } catch (const std::invalid_argument&) {
    return 0;  // a combination the writer refuses (e.g. a name repeated) is not an input
  }
  try {
    const auto ckpt = model::HfCheckpoint::open(dir, io::LoadMode::mmap);
    for (index_t l = 0; l < ckpt.model().num_layers; ++l) (void)ckpt.layer(l);
  } catch (const io::LoadError&) {
  } catch (const model::ConfigError&) {
  } catch (const ShapeError&) {
  }
  return 0;
}
