/* A host engine in C that uses atom as a plugin: it dlopens libatom_plugin.so, registers it
 * (honouring ATOM_DISABLE_VLLM_PLUGIN and ATOM_DISABLE_VLLM_PLUGIN_ATTENTION from its
 * environment), lists what was registered, and runs one decode step of a tiny DeepSeek-V3 layer
 * on buffers it owns.
 *
 *   host_engine <path/to/libatom_plugin.so> [tokens]
 *
 * When the attention backends are not registered it runs atom's MoE block alone, as an engine
 * that keeps its own attention would. */
#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atom/plugin/atom_plugin.h"

static const atom_plugin_api* api;

static int report(const char* what, atom_plugin_status status) {
  if (status == ATOM_PLUGIN_OK) return 0;
  fprintf(stderr, "host_engine: %s failed (status %d): %s\n", what, (int)status, api->last_error());
  return 1;
}

static void list_registration(const atom_plugin_registration* r,
                              const atom_plugin_registration_info* info) {
  size_t i;
  size_t j;
  printf("atom plugin: %s, attention backends %s\n",
         info->plugin_enabled ? "enabled" : "disabled (ATOM_DISABLE_VLLM_PLUGIN)",
         info->attention_enabled ? "registered" : "not registered, the engine's own are used");
  for (i = 0; i < info->model_count; ++i) {
    atom_plugin_model m;
    if (api->model(r, i, &m) != ATOM_PLUGIN_OK) continue;
    printf("  model %-22s layer=%s attention=%s moe=%s backend=%s presets=", m.architecture,
           m.layer_pipeline ? m.layer_pipeline : "-",
           m.attention_pipeline ? m.attention_pipeline : "-", m.moe_pipeline,
           m.attention_backend ? m.attention_backend : "-");
    for (j = 0; j < m.preset_count; ++j) printf("%s%s", j ? "," : "", m.presets[j]);
    printf("\n");
  }
  for (i = 0; i < info->attention_backend_count; ++i) {
    atom_plugin_attention_backend b;
    if (api->attention_backend(r, i, &b) != ATOM_PLUGIN_OK) continue;
    printf("  attention backend %-10s pipeline=%s cache: %s\n", b.name, b.pipeline, b.cache_layout);
  }
  if (info->warnings[0] != '\0') printf("  warnings: %s\n", info->warnings);
}

/* A bf16 from a float, rounding to nearest even (the inputs here are finite). */
static uint16_t to_bf16(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return (uint16_t)(bits >> 16);
}

static float from_bf16(uint16_t h) {
  const uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* Runs one decode step: token t has a context of 5 + 9 t positions, cache blocks handed out in
 * order, and the engine's random activations. */
static int run_step(const atom_plugin_registration* r, const char* kind, int64_t tokens) {
  atom_plugin_pipeline* p = NULL;
  atom_plugin_pipeline_info info;
  atom_plugin_batch_shape shape;
  atom_plugin_buffer_sizes need;
  atom_plugin_run_args a;
  int64_t t;
  int64_t next_block = 0;
  size_t i;
  int rc = 1;
  double sum = 0.0;
  unsigned seed = 1;
  int64_t* positions = NULL;
  int64_t* slots = NULL;
  int32_t* block_table = NULL;
  int32_t* context_lens = NULL;
  uint16_t *x = NULL, *residual = NULL, *out = NULL, *cache = NULL;

  if (report("create_pipeline",
             api->create_pipeline(r, "DeepseekV3ForCausalLM", kind, "deepseek-v3-tiny", 2024, &p)))
    return 1;
  if (report("pipeline_info", api->pipeline_info(p, &info))) goto done;
  printf("pipeline %s (%s) of %s: instance %s on %s\n", info.pipeline, info.kind, info.preset,
         info.instance, info.backend);

  shape.tokens = tokens;
  shape.max_blocks_per_token = (5 + 9 * tokens + info.block_size - 1) / info.block_size;
  shape.num_blocks = tokens * shape.max_blocks_per_token;
  if (report("buffer_sizes", api->buffer_sizes(p, &shape, &need))) goto done;

  positions = calloc((size_t)tokens, sizeof *positions);
  slots = calloc((size_t)tokens, sizeof *slots);
  context_lens = calloc((size_t)tokens, sizeof *context_lens);
  block_table = calloc(need.block_table + 1, sizeof *block_table);
  x = calloc(need.x, sizeof *x);
  residual = calloc(need.residual, sizeof *residual);
  out = calloc(need.out, sizeof *out);
  cache = calloc(need.mla_cache + 1, sizeof *cache);
  if (!positions || !slots || !context_lens || !block_table || !x || !residual || !out || !cache)
    goto done;
  /* The decode metadata, for pipelines that read a batch (a MoE block alone does not). */
  for (t = 0; t < tokens && need.block_table > 0; ++t) {
    const int64_t len = 5 + 9 * t;
    int64_t b;
    context_lens[t] = (int32_t)len;
    positions[t] = len - 1;
    for (b = 0; b < (len + info.block_size - 1) / info.block_size; ++b)
      block_table[t * shape.max_blocks_per_token + b] = (int32_t)next_block++;
    slots[t] = block_table[t * shape.max_blocks_per_token + (len - 1) / info.block_size] *
                   info.block_size +
               (len - 1) % info.block_size;
  }
  for (i = 0; i < need.x; ++i) x[i] = to_bf16((float)rand_r(&seed) / (float)RAND_MAX - 0.5f);
  for (i = 0; i < need.residual; ++i)
    residual[i] = to_bf16((float)rand_r(&seed) / (float)RAND_MAX - 0.5f);
  for (i = 0; i < need.mla_cache; ++i)
    cache[i] = to_bf16((float)rand_r(&seed) / (float)RAND_MAX - 0.5f);

  memset(&a, 0, sizeof a);
  a.shape = shape;
  a.x = x;
  a.x_count = need.x;
  a.residual = residual;
  a.residual_count = need.residual;
  a.out = out;
  a.out_count = need.out;
  a.positions = positions;
  a.positions_count = (size_t)tokens;
  a.slots = slots;
  a.slots_count = (size_t)tokens;
  a.block_table = block_table;
  a.block_table_count = need.block_table;
  a.context_lens = context_lens;
  a.context_lens_count = (size_t)tokens;
  a.mla_cache = cache;
  a.mla_cache_count = need.mla_cache;
  /* The host backend ignores the stream; a device backend would take the engine's. */
  if (report("run", api->run(p, &a, NULL))) goto done;
  for (i = 0; i < need.out; ++i) sum += (double)from_bf16(out[i]) * (double)from_bf16(out[i]);
  printf("ran %lld tokens: out[0][0..3] = %.4f %.4f %.4f %.4f, mean square %.6f\n",
         (long long)tokens, (double)from_bf16(out[0]), (double)from_bf16(out[1]),
         (double)from_bf16(out[2]), (double)from_bf16(out[3]), sum / (double)need.out);
  rc = sum == sum && sum > 0.0 ? 0 : 1; /* a NaN fails the first test */
done:
  free(positions);
  free(slots);
  free(context_lens);
  free(block_table);
  free(x);
  free(residual);
  free(out);
  free(cache);
  api->destroy_pipeline(p);
  return rc;
}

int main(int argc, char** argv) {
  void* lib;
  atom_plugin_get_api_fn get_api;
  const char* error = NULL;
  atom_plugin_registration* r = NULL;
  atom_plugin_registration_info info;
  int64_t tokens = 3;
  int rc = 0;
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s <libatom_plugin.so> [tokens]\n", argv[0]);
    return 2;
  }
  if (argc == 3) tokens = atoll(argv[2]);
  if (tokens < 1 || tokens > 4096) {
    fprintf(stderr, "host_engine: tokens must be 1..4096\n");
    return 2;
  }
  lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    fprintf(stderr, "host_engine: %s\n", dlerror());
    return 2;
  }
  *(void**)(&get_api) = dlsym(lib, ATOM_PLUGIN_ENTRY_POINT);
  if (get_api == NULL) {
    fprintf(stderr, "host_engine: %s\n", dlerror());
    return 2;
  }
  if (get_api(ATOM_PLUGIN_ABI_VERSION, &api, &error) != ATOM_PLUGIN_OK) {
    fprintf(stderr, "host_engine: %s\n", error);
    return 2;
  }
  if (report("register_plugin", api->register_plugin(NULL, &r))) return 2;
  if (report("registration_info", api->registration_info(r, &info))) return 2;
  list_registration(r, &info);
  if (info.attention_enabled)
    rc = run_step(r, "layer", tokens);
  else if (info.plugin_enabled)
    rc = run_step(r, "moe", tokens);
  else
    printf("nothing registered: the engine runs without atom\n");
  api->release_registration(r);
  dlclose(lib);
  return rc;
}
