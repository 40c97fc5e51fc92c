// Every op of the op interface, for the pipelines.
#pragma once

#include "atom/ops/backend.hpp"
#include "atom/ops/bmm.hpp"
#include "atom/ops/formats.hpp"
#include "atom/ops/gemm.hpp"
#include "atom/ops/moe.hpp"
#include "atom/ops/norm.hpp"
#include "atom/ops/quant.hpp"
