/* A random ragged decode batch in host memory, laid out as atom_plugin_run_args wants it, for the
 * C tests of the plugin ABI, with the cache of the pipeline's cache kind (the key/value caches FP8
 * codes or, for ATOM_PLUGIN_CACHE_KV_BF16, bf16). Deterministic in its seed. */
#ifndef ATOM_TESTS_PLUGIN_DECODE_BATCH_H
#define ATOM_TESTS_PLUGIN_DECODE_BATCH_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "atom/plugin/atom_plugin.h"

typedef struct decode_batch {
  atom_plugin_buffer_sizes sizes;
  atom_plugin_run_args args;
  uint16_t* x;
  uint16_t* residual;
  uint16_t* out;
  int64_t* positions;
  int64_t* slots;
  int32_t* block_table;
  int32_t* context_lens;
  uint16_t* mla_cache;
  void* key_cache; /* uint8_t FP8 codes, or uint16_t bf16 for ATOM_PLUGIN_CACHE_KV_BF16 */
  void* value_cache;
  size_t kv_element_size;
  float* key_scale;
  float* value_scale;
} decode_batch;

static uint64_t batch_next(uint64_t* state) {
  /* splitmix64 */
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* A bf16 of magnitude below 2 with random sign and mantissa (never NaN or infinite). */
static uint16_t batch_random_bf16(uint64_t* state) {
  const uint64_t r = batch_next(state);
  const uint16_t exponent = (uint16_t)(120u + (r & 7u)); /* 2^-7 .. 2^0 */
  const uint16_t mantissa = (uint16_t)((r >> 8) & 0x7Fu);
  const uint16_t sign = (uint16_t)((r >> 16) & 1u);
  return (uint16_t)((sign << 15) | (exponent << 7) | mantissa);
}

/* An FP8 e4m3 code that is not NaN (0x7F and 0xFF are the NaN codes). */
static uint8_t batch_random_fp8(uint64_t* state) {
  uint8_t c = (uint8_t)(batch_next(state) & 0xFFu);
  if ((c & 0x7Fu) == 0x7Fu) c = (uint8_t)(c ^ 0x01u);
  return c;
}

static void* batch_alloc(size_t count, size_t size) {
  return calloc(count > 0 ? count : 1, size);
}

static void batch_free(decode_batch* b) {
  free(b->x);
  free(b->residual);
  free(b->out);
  free(b->positions);
  free(b->slots);
  free(b->block_table);
  free(b->context_lens);
  free(b->mla_cache);
  free(b->key_cache);
  free(b->value_cache);
  free(b->key_scale);
  free(b->value_scale);
  memset(b, 0, sizeof *b);
}

/* `count` random key/value cache elements of `element_size` bytes: FP8 codes or bf16. */
static void* batch_kv_cache(size_t count, size_t element_size, uint64_t* state) {
  void* p = batch_alloc(count, element_size);
  size_t i;
  for (i = 0; i < count; ++i) {
    if (element_size == 2)
      ((uint16_t*)p)[i] = batch_random_bf16(state);
    else
      ((uint8_t*)p)[i] = batch_random_fp8(state);
  }
  return p;
}

/* Token t gets a context of 1 + (t * 37 + seed) % max_context positions, its own shuffled cache
 * blocks, and writes its newest position; x, residual and the cache are random, out is filled
 * with 0xFFFF (a bf16 NaN) so that an unwritten element shows. Returns 0 on success. */
static int batch_make(decode_batch* b, const atom_plugin_api* api,
                      const atom_plugin_pipeline* pipeline, int64_t tokens, int64_t max_context,
                      uint64_t seed) {
  atom_plugin_pipeline_info info;
  int64_t t;
  int64_t i;
  int64_t block_size;
  int64_t max_blocks;
  int64_t total_blocks = 0;
  int32_t* pool;
  int64_t next = 0;
  uint64_t state = seed;
  memset(b, 0, sizeof *b);
  if (api->pipeline_info(pipeline, &info) != ATOM_PLUGIN_OK) return 1;
  block_size = info.block_size;
  max_blocks = (max_context + block_size - 1) / block_size;
  b->context_lens = (int32_t*)batch_alloc((size_t)tokens, sizeof(int32_t));
  for (t = 0; t < tokens; ++t) {
    b->context_lens[t] = (int32_t)(1 + (t * 37 + (int64_t)(seed % 101)) % max_context);
    total_blocks += (b->context_lens[t] + block_size - 1) / block_size;
  }
  b->args.shape.tokens = tokens;
  b->args.shape.max_blocks_per_token = max_blocks;
  b->args.shape.num_blocks = total_blocks;
  if (api->buffer_sizes(pipeline, &b->args.shape, &b->sizes) != ATOM_PLUGIN_OK) return 1;

  pool = (int32_t*)batch_alloc((size_t)total_blocks, sizeof(int32_t));
  for (i = 0; i < total_blocks; ++i) pool[i] = (int32_t)i;
  for (i = total_blocks - 1; i > 0; --i) {
    const int64_t j = (int64_t)(batch_next(&state) % (uint64_t)(i + 1));
    const int32_t tmp = pool[i];
    pool[i] = pool[j];
    pool[j] = tmp;
  }
  b->positions = (int64_t*)batch_alloc((size_t)tokens, sizeof(int64_t));
  b->slots = (int64_t*)batch_alloc((size_t)tokens, sizeof(int64_t));
  b->block_table = (int32_t*)batch_alloc((size_t)(tokens * max_blocks), sizeof(int32_t));
  for (t = 0; t < tokens; ++t) {
    const int64_t len = b->context_lens[t];
    const int64_t last = len - 1;
    for (i = 0; i < (len + block_size - 1) / block_size; ++i)
      b->block_table[t * max_blocks + i] = pool[next++];
    b->positions[t] = last;
    b->slots[t] = (int64_t)b->block_table[t * max_blocks + last / block_size] * block_size +
                  last % block_size;
  }
  free(pool);

  b->x = (uint16_t*)batch_alloc(b->sizes.x, sizeof(uint16_t));
  b->residual = (uint16_t*)batch_alloc(b->sizes.residual, sizeof(uint16_t));
  b->out = (uint16_t*)batch_alloc(b->sizes.out, sizeof(uint16_t));
  for (i = 0; i < (int64_t)b->sizes.x; ++i) b->x[i] = batch_random_bf16(&state);
  for (i = 0; i < (int64_t)b->sizes.residual; ++i) b->residual[i] = batch_random_bf16(&state);
  memset(b->out, 0xFF, b->sizes.out * sizeof(uint16_t));
  b->mla_cache = (uint16_t*)batch_alloc(b->sizes.mla_cache, sizeof(uint16_t));
  for (i = 0; i < (int64_t)b->sizes.mla_cache; ++i) b->mla_cache[i] = batch_random_bf16(&state);
  b->kv_element_size = info.cache_kind == ATOM_PLUGIN_CACHE_KV_BF16 ? 2u : 1u;
  b->key_cache = batch_kv_cache(b->sizes.key_cache, b->kv_element_size, &state);
  b->value_cache = batch_kv_cache(b->sizes.value_cache, b->kv_element_size, &state);
  b->key_scale = (float*)batch_alloc(b->sizes.key_scale, sizeof(float));
  b->value_scale = (float*)batch_alloc(b->sizes.value_scale, sizeof(float));
  for (i = 0; i < (int64_t)b->sizes.key_scale; ++i)
    b->key_scale[i] = 0.001f + (float)(batch_next(&state) % 1000u) * 1e-5f;
  for (i = 0; i < (int64_t)b->sizes.value_scale; ++i)
    b->value_scale[i] = 0.001f + (float)(batch_next(&state) % 1000u) * 1e-5f;

  b->args.x = b->x;
  b->args.x_count = b->sizes.x;
  b->args.residual = b->residual;
  b->args.residual_count = b->sizes.residual;
  b->args.out = b->out;
  b->args.out_count = b->sizes.out;
  b->args.positions = b->positions;
  b->args.positions_count = b->sizes.positions;
  b->args.slots = b->slots;
  b->args.slots_count = b->sizes.slots;
  b->args.block_table = b->block_table;
  b->args.block_table_count = b->sizes.block_table;
  b->args.context_lens = b->context_lens;
  b->args.context_lens_count = b->sizes.context_lens;
  b->args.mla_cache = b->sizes.mla_cache ? b->mla_cache : NULL;
  b->args.mla_cache_count = b->sizes.mla_cache;
  b->args.key_cache = b->sizes.key_cache ? b->key_cache : NULL;
  b->args.key_cache_count = b->sizes.key_cache;
  b->args.value_cache = b->sizes.value_cache ? b->value_cache : NULL;
  b->args.value_cache_count = b->sizes.value_cache;
  b->args.key_scale = b->sizes.key_scale ? b->key_scale : NULL;
  b->args.key_scale_count = b->sizes.key_scale;
  b->args.value_scale = b->sizes.value_scale ? b->value_scale : NULL;
  b->args.value_scale_count = b->sizes.value_scale;
  return 0;
}

/* Whether a bf16 is NaN or infinite. */
static int batch_bf16_nonfinite(uint16_t bits) {
  return (bits & 0x7F80u) == 0x7F80u;
}

#endif /* ATOM_TESTS_PLUGIN_DECODE_BATCH_H */
