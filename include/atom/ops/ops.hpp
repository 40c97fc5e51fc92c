// Every op of the op interface, for the pipelines.
#pragma once

#include "atom/ops/attention.hpp"
#include "atom/ops/backend.hpp"
#include "atom/ops/bmm.hpp"
#include "atom/ops/cache.hpp"
#include "atom/ops/formats.hpp"
#include "atom/ops/gemm.hpp"
#include "atom/ops/moe.hpp"
#include "atom/ops/norm.hpp"
#include "atom/ops/quant.hpp"
#include "atom/ops/qwen_qk.hpp"
#include "atom/ops/rope.hpp"
