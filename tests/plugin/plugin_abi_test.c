/* Tests of libatom_plugin.so through its C ABI only, as a host engine written in C sees it:
 * dlopen, the version check, registration under the ATOM_DISABLE_VLLM_PLUGIN* variables, bad
 * input of every kind, and runs of tiny layers.
 *
 *   plugin_abi_test <libatom_plugin.so> registration <plugin 0|1> <attention 0|1>
 *   plugin_abi_test <libatom_plugin.so> settings | invalid-env | env-warning | version |
 *                                       bad-input | run
 *   plugin_abi_test <libatom_plugin.so> kv-caches <Qwen3-MoE checkpoint folder>
 *
 * `registration` reads the process environment (ctest sets it per test) and checks that what is
 * registered is what the flags say; `invalid-env` expects ATOM_DISABLE_VLLM_PLUGIN to hold a
 * value that does not parse, `env-warning` ATOM_DISABLE_VLLM_PLUGN (a misspelt name) to be set;
 * `kv-caches` loads a layer of the checkpoint for each GQA cache kind (ABI 4). */
#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atom/plugin/atom_plugin.h"
#include "decode_batch.h"

static int failures = 0;
static const atom_plugin_api* api = NULL;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                              \
    }                                                                          \
  } while (0)

/* A call that must fail with `status` and a message containing `needle`. */
#define CHECK_FAILS(call, status, needle)                                                        \
  do {                                                                                           \
    const atom_plugin_status got_ = (call);                                                      \
    const char* msg_ = api->last_error();                                                        \
    if (got_ != (status) || strstr(msg_, (needle)) == NULL) {                                    \
      fprintf(stderr, "%s:%d: %s returned %d (%s), expected %d with '%s'\n", __FILE__, __LINE__, \
              #call, (int)got_, msg_, (int)(status), (needle));                                  \
      ++failures;                                                                                \
    }                                                                                            \
  } while (0)

#define CHECK_OK(call)                                                                     \
  do {                                                                                     \
    const atom_plugin_status got_ = (call);                                                \
    if (got_ != ATOM_PLUGIN_OK) {                                                          \
      fprintf(stderr, "%s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #call, (int)got_, \
              api->last_error());                                                          \
      ++failures;                                                                          \
    }                                                                                      \
  } while (0)

static const char* const architectures[2] = {"DeepseekV3ForCausalLM", "Qwen3MoeForCausalLM"};
static const char* const tiny_presets[2] = {"deepseek-v3-tiny", "qwen3-30b-a3b-tiny"};
static const char* const kinds[3] = {"layer", "attention", "moe"};

static int streq(const char* a, const char* b) {
  return a != NULL && b != NULL && strcmp(a, b) == 0;
}

/* What a registration must hold for the two flags; creating pipelines of every kind checks that
 * a refusal is exactly what the flags say. */
static void check_registration(const atom_plugin_registration* r, int plugin, int attention) {
  atom_plugin_registration_info info;
  atom_plugin_model m;
  atom_plugin_attention_backend b;
  size_t i;
  size_t k;
  CHECK_OK(api->registration_info(r, &info));
  CHECK(info.plugin_enabled == plugin);
  CHECK(info.attention_enabled == (plugin && attention));
  CHECK(info.model_count == (plugin ? 2u : 0u));
  CHECK(info.attention_backend_count == (plugin && attention ? 2u : 0u));
  CHECK(info.warnings != NULL);
  for (i = 0; i < info.model_count; ++i) {
    CHECK_OK(api->model(r, i, &m));
    CHECK(streq(m.architecture, architectures[i]));
    CHECK(streq(m.moe_pipeline, "moe_block"));
    CHECK(m.preset_count == 2 && streq(m.presets[1], tiny_presets[i]));
    if (attention) {
      CHECK(streq(m.layer_pipeline, i == 0 ? "ds_layer" : "qwen3_layer"));
      CHECK(streq(m.attention_pipeline, i == 0 ? "mla_attention" : "qwen3_attention"));
      CHECK(streq(m.attention_backend, i == 0 ? "mla" : "paged_gqa"));
    } else {
      CHECK(m.layer_pipeline == NULL && m.attention_pipeline == NULL);
      CHECK(m.attention_backend == NULL);
    }
  }
  CHECK_FAILS(api->model(r, info.model_count, &m), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
              plugin ? "2 registered models" : "ATOM_DISABLE_VLLM_PLUGIN is set");
  for (i = 0; i < info.attention_backend_count; ++i) {
    CHECK_OK(api->attention_backend(r, i, &b));
    CHECK(streq(b.name, i == 0 ? "mla" : "paged_gqa"));
    CHECK(streq(b.pipeline, i == 0 ? "mla_attention" : "qwen3_attention"));
    CHECK(b.cache_layout != NULL && strlen(b.cache_layout) > 0);
  }
  CHECK_FAILS(api->attention_backend(r, info.attention_backend_count, &b),
              ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
              !plugin      ? "ATOM_DISABLE_VLLM_PLUGIN is set"
              : !attention ? "ATOM_DISABLE_VLLM_PLUGIN_ATTENTION is set"
                           : "2 registered attention backends");
  for (i = 0; i < 2; ++i) {
    for (k = 0; k < 3; ++k) {
      atom_plugin_pipeline* p = (atom_plugin_pipeline*)&p;
      const int served = plugin && (attention || k == 2);
      if (served) {
        CHECK_OK(api->create_pipeline(r, architectures[i], kinds[k], tiny_presets[i], 1, &p));
        CHECK(p != NULL);
        api->destroy_pipeline(p);
      } else {
        CHECK_FAILS(api->create_pipeline(r, architectures[i], kinds[k], tiny_presets[i], 1, &p),
                    ATOM_PLUGIN_ERROR_NOT_REGISTERED,
                    plugin ? "ATOM_DISABLE_VLLM_PLUGIN_ATTENTION" : "ATOM_DISABLE_VLLM_PLUGIN");
        CHECK(p == NULL);
      }
    }
  }
}

static void test_registration(int plugin, int attention) {
  atom_plugin_registration* r = NULL;
  CHECK_OK(api->register_plugin(NULL, &r));
  if (r == NULL) return;
  check_registration(r, plugin, attention);
  api->release_registration(r);
}

/* Explicit settings replace the environment: every combination, in several spellings, whatever
 * the process environment says. */
static void test_settings(void) {
  static const char* const spellings[4][2] = {
      {"0", "off"}, {"no", "TRUE"}, {"yes", "0"}, {"On", "1"}};
  atom_plugin_registration* r = NULL;
  int c;
  setenv("ATOM_DISABLE_VLLM_PLUGIN", "1", 1);
  setenv("ATOM_DISABLE_VLLM_PLUGIN_ATTENTION", "1", 1);
  for (c = 0; c < 4; ++c) {
    const char* settings[5];
    const int plugin = c < 2;
    const int attention = c % 2 == 0;
    settings[0] = "ATOM_DISABLE_VLLM_PLUGIN";
    settings[1] = spellings[c][0];
    settings[2] = "ATOM_DISABLE_VLLM_PLUGIN_ATTENTION";
    settings[3] = spellings[c][1];
    settings[4] = NULL;
    CHECK_OK(api->register_plugin(settings, &r));
    if (r == NULL) continue;
    check_registration(r, plugin, attention);
    api->release_registration(r);
    r = NULL;
  }
  {
    /* Names not given take their defaults: everything registered. */
    const char* const none[1] = {NULL};
    CHECK_OK(api->register_plugin(none, &r));
    if (r != NULL) check_registration(r, 1, 1);
    api->release_registration(r);
  }
  {
    const char* const bad_value[3] = {"ATOM_DISABLE_VLLM_PLUGIN_ATTENTION", "maybe", NULL};
    const char* const unknown[3] = {"ATOM_DISABLE_VLLM_PLUGINS", "1", NULL};
    const char* const odd[2] = {"ATOM_DISABLE_VLLM_PLUGIN", NULL};
    const char* const twice[5] = {"ATOM_DISABLE_VLLM_PLUGIN", "1", "ATOM_DISABLE_VLLM_PLUGIN", "0",
                                  NULL};
    const char* const bad_int[3] = {"ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD", "-5", NULL};
    r = (atom_plugin_registration*)&r;
    CHECK_FAILS(api->register_plugin(bad_value, &r), ATOM_PLUGIN_ERROR_CONFIG,
                "ATOM_DISABLE_VLLM_PLUGIN_ATTENTION");
    CHECK(r == NULL);
    CHECK_FAILS(api->register_plugin(bad_value, &r), ATOM_PLUGIN_ERROR_CONFIG, "maybe");
    CHECK_FAILS(api->register_plugin(unknown, &r), ATOM_PLUGIN_ERROR_UNKNOWN_NAME,
                "did you mean ATOM_DISABLE_VLLM_PLUGIN?");
    CHECK_FAILS(api->register_plugin(odd, &r), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "has no value");
    CHECK_FAILS(api->register_plugin(twice, &r), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "given twice");
    CHECK_FAILS(api->register_plugin(bad_int, &r), ATOM_PLUGIN_ERROR_CONFIG,
                "ATOM_DUAL_STREAM_MOE_TOKEN_THRESHOLD");
    CHECK(r == NULL);
  }
}

static void test_invalid_env(void) {
  const char* const defaults[1] = {NULL};
  atom_plugin_registration* r = (atom_plugin_registration*)&r;
  CHECK_FAILS(api->register_plugin(NULL, &r), ATOM_PLUGIN_ERROR_CONFIG, "ATOM_DISABLE_VLLM_PLUGIN");
  CHECK(r == NULL);
  CHECK(strstr(api->last_error(), "true/false") != NULL);
  /* Explicit settings do not read the environment. */
  CHECK_OK(api->register_plugin(defaults, &r));
  if (r != NULL) check_registration(r, 1, 1);
  api->release_registration(r);
}

/* An unknown ATOM_* name in the environment is a warning the host can read, not an error. */
static void test_env_warning(void) {
  atom_plugin_registration* r = NULL;
  atom_plugin_registration_info info;
  CHECK_OK(api->register_plugin(NULL, &r));
  if (r == NULL) return;
  CHECK_OK(api->registration_info(r, &info));
  CHECK(strstr(info.warnings, "unknown variable ATOM_DISABLE_VLLM_PLUGN is ignored") != NULL);
  CHECK(strstr(info.warnings, "did you mean ATOM_DISABLE_VLLM_PLUGIN?") != NULL);
  check_registration(r, 1, 1);
  api->release_registration(r);
}

static void test_version(atom_plugin_get_api_fn get_api) {
  static const uint32_t wrong[4] = {0u, ATOM_PLUGIN_ABI_VERSION + 1u, 1000u, 0xFFFFFFFFu};
  const atom_plugin_api* a = NULL;
  const char* error = NULL;
  size_t i;
  for (i = 0; i < 4; ++i) {
    if (wrong[i] == ATOM_PLUGIN_ABI_VERSION) continue;
    a = api;
    error = NULL;
    CHECK(get_api(wrong[i], &a, &error) == ATOM_PLUGIN_ERROR_ABI_VERSION);
    CHECK(a == NULL);
    CHECK(error != NULL && strstr(error, "provides versions 1 to 4") != NULL);
    CHECK(get_api(wrong[i], &a, NULL) == ATOM_PLUGIN_ERROR_ABI_VERSION);
  }
  /* The earlier versions are still answered, each with its own number and table size. */
  for (i = 1; i < ATOM_PLUGIN_ABI_VERSION; ++i) {
    static const size_t sizes[3] = {offsetof(atom_plugin_api, load_pipeline),
                                    offsetof(atom_plugin_api, load_pipeline_tp),
                                    sizeof(atom_plugin_api)};
    a = NULL;
    CHECK(get_api((uint32_t)i, &a, &error) == ATOM_PLUGIN_OK);
    CHECK(a != NULL && a->abi_version == i && a->struct_size == sizes[i - 1]);
  }
  error = NULL;
  CHECK(get_api(ATOM_PLUGIN_ABI_VERSION, NULL, &error) == ATOM_PLUGIN_ERROR_NULL_POINTER);
  CHECK(error != NULL && strstr(error, "'api' is NULL") != NULL);
  CHECK(get_api(ATOM_PLUGIN_ABI_VERSION, &a, &error) == ATOM_PLUGIN_OK);
  CHECK(a == api && error != NULL && error[0] == '\0');
  CHECK(a->abi_version == ATOM_PLUGIN_ABI_VERSION);
  CHECK(a->struct_size == sizeof(atom_plugin_api));
}

/* One run-argument buffer, seen generically so that every one can be broken in turn. */
typedef struct buffer_ref {
  const char* name;
  void* pointer; /* the address of the args field that holds the buffer's pointer */
  size_t* count;
} buffer_ref;

static void test_bad_run_args(atom_plugin_pipeline* p, int64_t tokens) {
  decode_batch b;
  atom_plugin_run_args a;
  buffer_ref refs[12];
  size_t n = 0;
  size_t i;
  uint16_t* cache_copy;
  size_t cache_bytes;
  if (batch_make(&b, api, p, tokens, 40, 7) != 0) {
    CHECK(!"batch_make");
    return;
  }
#define REF(field) \
  refs[n].name = #field, refs[n].pointer = &a.field, refs[n].count = &a.field##_count, ++n
  REF(x);
  REF(residual);
  REF(out);
  REF(positions);
  REF(slots);
  REF(block_table);
  REF(context_lens);
  REF(mla_cache);
  REF(key_cache);
  REF(value_cache);
  REF(key_scale);
  REF(value_scale);
#undef REF
  cache_bytes = b.sizes.mla_cache * sizeof(uint16_t);
  cache_copy = (uint16_t*)batch_alloc(b.sizes.mla_cache, sizeof(uint16_t));
  memcpy(cache_copy, b.mla_cache, cache_bytes);
  for (i = 0; i < n; ++i) {
    char needle[64];
    a = b.args;
    if (*refs[i].count == 0) continue; /* a buffer this kind does not read */
    *refs[i].count -= 1;
    snprintf(needle, sizeof needle, "args.%s holds", refs[i].name);
    CHECK_FAILS(api->run(p, &a, NULL), ATOM_PLUGIN_ERROR_BUFFER_TOO_SMALL, needle);
    a = b.args;
    memset(refs[i].pointer, 0, sizeof(void*));
    snprintf(needle, sizeof needle, "args.%s is NULL", refs[i].name);
    CHECK_FAILS(api->run(p, &a, NULL), ATOM_PLUGIN_ERROR_NULL_POINTER, needle);
  }
  a = b.args;
  a.shape.tokens = 0;
  CHECK_FAILS(api->run(p, &a, NULL), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "shape.tokens is 0");
  a = b.args;
  a.shape.tokens = -3;
  CHECK_FAILS(api->run(p, &a, NULL), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "shape.tokens is -3");
  a = b.args;
  a.out = b.residual;
  CHECK_FAILS(api->run(p, &a, NULL), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
              "args.residual overlaps args.out");
  if (b.sizes.context_lens > 0) {
    const int32_t saved_len = b.context_lens[tokens - 1];
    const int64_t saved_pos = b.positions[0];
    const int32_t saved_block = b.block_table[0];
    const int64_t saved_slot = b.slots[tokens - 1];
    b.context_lens[tokens - 1] = 0;
    CHECK_FAILS(api->run(p, &b.args, NULL), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
                "args.context_lens[");
    b.context_lens[tokens - 1] = 1 << 20;
    CHECK_FAILS(api->run(p, &b.args, NULL), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
                "args.context_lens[");
    b.context_lens[tokens - 1] = saved_len;
    b.positions[0] = -1;
    CHECK_FAILS(api->run(p, &b.args, NULL), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
                "args.positions[0] is -1");
    b.positions[0] = saved_pos;
    b.block_table[0] = (int32_t)b.args.shape.num_blocks;
    CHECK_FAILS(api->run(p, &b.args, NULL), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
                "args.block_table[0, 0]");
    b.block_table[0] = saved_block;
    b.slots[tokens - 1] = b.args.shape.num_blocks * 16;
    CHECK_FAILS(api->run(p, &b.args, NULL), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "args.slots[");
    if (tokens > 1) {
      b.slots[tokens - 1] = b.slots[0];
      CHECK_FAILS(api->run(p, &b.args, NULL), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
                  "written by an earlier token");
    }
    b.slots[tokens - 1] = saved_slot;
  }
  /* Nothing was written by any refused run. */
  for (i = 0; i < b.sizes.out; ++i)
    if (b.out[i] != 0xFFFFu) break;
  CHECK(i == b.sizes.out);
  CHECK(memcmp(cache_copy, b.mla_cache, cache_bytes) == 0);
  free(cache_copy);
  /* The intact arguments still run. */
  CHECK_OK(api->run(p, &b.args, NULL));
  batch_free(&b);
}

static void test_bad_input(void) {
  atom_plugin_registration* r = NULL;
  atom_plugin_pipeline* p = NULL;
  atom_plugin_registration_info ri;
  atom_plugin_model m;
  atom_plugin_attention_backend ab;
  atom_plugin_pipeline_info pi;
  atom_plugin_batch_shape shape = {3, 4, 12};
  atom_plugin_buffer_sizes sizes;
  const char* const defaults[1] = {NULL};
  size_t i;

  CHECK_FAILS(api->register_plugin(defaults, NULL), ATOM_PLUGIN_ERROR_NULL_POINTER,
              "register_plugin: argument 'out' is NULL");
  CHECK_OK(api->register_plugin(defaults, &r));
  if (r == NULL) return;
  CHECK_FAILS(api->registration_info(NULL, &ri), ATOM_PLUGIN_ERROR_NULL_POINTER, "registration");
  CHECK_FAILS(api->registration_info(r, NULL), ATOM_PLUGIN_ERROR_NULL_POINTER, "'out'");
  CHECK_FAILS(api->model(NULL, 0, &m), ATOM_PLUGIN_ERROR_NULL_POINTER, "registration");
  CHECK_FAILS(api->model(r, 0, NULL), ATOM_PLUGIN_ERROR_NULL_POINTER, "'out'");
  CHECK_FAILS(api->model(r, (size_t)-1, &m), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "index");
  CHECK_FAILS(api->attention_backend(NULL, 0, &ab), ATOM_PLUGIN_ERROR_NULL_POINTER, "registration");
  CHECK_FAILS(api->attention_backend(r, 0, NULL), ATOM_PLUGIN_ERROR_NULL_POINTER, "'out'");

  p = (atom_plugin_pipeline*)&p;
  CHECK_FAILS(api->create_pipeline(NULL, architectures[0], "layer", tiny_presets[0], 1, &p),
              ATOM_PLUGIN_ERROR_NULL_POINTER, "registration");
  CHECK(p == NULL);
  CHECK_FAILS(api->create_pipeline(r, NULL, "layer", tiny_presets[0], 1, &p),
              ATOM_PLUGIN_ERROR_NULL_POINTER, "architecture");
  CHECK_FAILS(api->create_pipeline(r, architectures[0], NULL, tiny_presets[0], 1, &p),
              ATOM_PLUGIN_ERROR_NULL_POINTER, "kind");
  CHECK_FAILS(api->create_pipeline(r, architectures[0], "layer", NULL, 1, &p),
              ATOM_PLUGIN_ERROR_NULL_POINTER, "preset");
  CHECK_FAILS(api->create_pipeline(r, architectures[0], "layer", tiny_presets[0], 1, NULL),
              ATOM_PLUGIN_ERROR_NULL_POINTER, "'out'");
  CHECK_FAILS(api->create_pipeline(r, "LlamaForCausalLM", "layer", tiny_presets[0], 1, &p),
              ATOM_PLUGIN_ERROR_UNKNOWN_ARCHITECTURE,
              "unknown architecture 'LlamaForCausalLM'; atom serves DeepseekV3ForCausalLM, "
              "Qwen3MoeForCausalLM");
  CHECK_FAILS(api->create_pipeline(r, "", "layer", tiny_presets[0], 1, &p),
              ATOM_PLUGIN_ERROR_UNKNOWN_ARCHITECTURE, "unknown architecture ''");
  CHECK_FAILS(api->create_pipeline(r, "deepseekv3forcausallm", "layer", tiny_presets[0], 1, &p),
              ATOM_PLUGIN_ERROR_UNKNOWN_ARCHITECTURE, "unknown architecture");
  CHECK_FAILS(api->create_pipeline(r, architectures[0], "mlp", tiny_presets[0], 1, &p),
              ATOM_PLUGIN_ERROR_UNKNOWN_NAME, "unknown pipeline kind 'mlp'");
  CHECK_FAILS(api->create_pipeline(r, architectures[0], "layer", tiny_presets[1], 1, &p),
              ATOM_PLUGIN_ERROR_UNKNOWN_NAME,
              "preset 'qwen3-30b-a3b-tiny' is not a model of DeepseekV3ForCausalLM");
  CHECK_FAILS(api->create_pipeline(r, architectures[1], "moe", "qwen3\x01", 1, &p),
              ATOM_PLUGIN_ERROR_UNKNOWN_NAME, "preset 'qwen3\\x01'");
  CHECK(p == NULL);

  CHECK_FAILS(api->pipeline_info(NULL, &pi), ATOM_PLUGIN_ERROR_NULL_POINTER, "pipeline");
  CHECK_FAILS(api->buffer_sizes(NULL, &shape, &sizes), ATOM_PLUGIN_ERROR_NULL_POINTER, "pipeline");
  CHECK_FAILS(api->run(NULL, NULL, NULL), ATOM_PLUGIN_ERROR_NULL_POINTER, "pipeline");
  api->destroy_pipeline(NULL);
  api->release_registration(NULL);

  for (i = 0; i < 2; ++i) {
    size_t k;
    for (k = 0; k < 3; ++k) {
      p = NULL;
      CHECK_OK(api->create_pipeline(r, architectures[i], kinds[k], tiny_presets[i], 5, &p));
      if (p == NULL) continue;
      CHECK_FAILS(api->pipeline_info(p, NULL), ATOM_PLUGIN_ERROR_NULL_POINTER, "'out'");
      CHECK_FAILS(api->buffer_sizes(p, NULL, &sizes), ATOM_PLUGIN_ERROR_NULL_POINTER, "shape");
      CHECK_FAILS(api->buffer_sizes(p, &shape, NULL), ATOM_PLUGIN_ERROR_NULL_POINTER, "'out'");
      CHECK_FAILS(api->run(p, NULL, NULL), ATOM_PLUGIN_ERROR_NULL_POINTER, "args");
      if (k != 2) {
        atom_plugin_batch_shape s = shape;
        s.num_blocks = 0;
        CHECK_FAILS(api->buffer_sizes(p, &s, &sizes), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
                    "shape.num_blocks is 0");
        s = shape;
        s.max_blocks_per_token = -1;
        CHECK_FAILS(api->buffer_sizes(p, &s, &sizes), ATOM_PLUGIN_ERROR_INVALID_ARGUMENT,
                    "shape.max_blocks_per_token is -1");
      }
      test_bad_run_args(p, 1);
      test_bad_run_args(p, 3);
      api->destroy_pipeline(p);
    }
  }
  api->release_registration(r);
}

/* Every kind of both architectures on odd and round batch sizes: every output element written
 * and finite, the same bytes from two equal runs, other bytes from other weights. */
static void test_run(void) {
  static const int64_t token_counts[4] = {1, 3, 16, 17};
  atom_plugin_registration* r = NULL;
  const char* const defaults[1] = {NULL};
  size_t i;
  CHECK_OK(api->register_plugin(defaults, &r));
  if (r == NULL) return;
  for (i = 0; i < 2; ++i) {
    size_t k;
    for (k = 0; k < 3; ++k) {
      atom_plugin_pipeline* p = NULL;
      atom_plugin_pipeline* other = NULL;
      atom_plugin_pipeline_info info;
      size_t n;
      CHECK_OK(api->create_pipeline(r, architectures[i], kinds[k], tiny_presets[i], 11, &p));
      CHECK_OK(api->create_pipeline(r, architectures[i], kinds[k], tiny_presets[i], 12, &other));
      if (p == NULL || other == NULL) continue;
      CHECK_OK(api->pipeline_info(p, &info));
      CHECK(streq(info.kind, kinds[k]) && streq(info.architecture, architectures[i]));
      CHECK(streq(info.preset, tiny_presets[i]) && streq(info.backend, "host"));
      CHECK(info.hidden == 256 && info.instance != NULL && strlen(info.instance) > 0);
      CHECK(info.cache_kind == (k == 2   ? ATOM_PLUGIN_CACHE_NONE
                                : i == 0 ? ATOM_PLUGIN_CACHE_MLA_LATENT
                                         : ATOM_PLUGIN_CACHE_FP8_KV));
      for (n = 0; n < 4; ++n) {
        decode_batch first;
        decode_batch second;
        decode_batch third;
        size_t e;
        size_t unwritten = 0;
        const int64_t tokens = token_counts[n];
        if (batch_make(&first, api, p, tokens, 70, 100 + n) != 0 ||
            batch_make(&second, api, p, tokens, 70, 100 + n) != 0 ||
            batch_make(&third, api, other, tokens, 70, 100 + n) != 0) {
          CHECK(!"batch_make");
          continue;
        }
        CHECK(first.sizes.x == (size_t)tokens * 256u);
        CHECK_OK(api->run(p, &first.args, NULL));
        CHECK_OK(api->run(p, &second.args, NULL));
        CHECK_OK(api->run(other, &third.args, NULL));
        for (e = 0; e < first.sizes.out; ++e)
          unwritten +=
              batch_bf16_nonfinite(first.out[e]) || batch_bf16_nonfinite(first.residual[e]);
        CHECK(unwritten == 0);
        CHECK(memcmp(first.out, second.out, first.sizes.out * 2) == 0);
        CHECK(memcmp(first.residual, second.residual, first.sizes.residual * 2) == 0);
        CHECK(memcmp(first.mla_cache, second.mla_cache, first.sizes.mla_cache * 2) == 0);
        CHECK(memcmp(first.key_cache, second.key_cache, first.sizes.key_cache) == 0);
        CHECK(memcmp(first.value_cache, second.value_cache, first.sizes.value_cache) == 0);
        CHECK(memcmp(first.out, third.out, first.sizes.out * 2) != 0);
        batch_free(&first);
        batch_free(&second);
        batch_free(&third);
      }
      api->destroy_pipeline(p);
      api->destroy_pipeline(other);
    }
  }
  api->release_registration(r);
}

/* A layer of the Qwen3 checkpoint `dir` loaded for each GQA cache kind through version 4's
 * options: its info and sizes say the kind (the scales per row, one per tensor, none), every kind
 * runs (outputs written and finite, two runs alike) and has its bad buffers refused; version 3's
 * table loads the default, FP8_KV, whatever follows max_tokens; a value of no kind is refused. */
static void test_kv_caches(atom_plugin_get_api_fn get_api, const char* dir) {
  static const atom_plugin_cache_kind cache_kinds[3] = {
      ATOM_PLUGIN_CACHE_FP8_KV, ATOM_PLUGIN_CACHE_KV_FP8_TENSOR, ATOM_PLUGIN_CACHE_KV_BF16};
  const char* const defaults[1] = {NULL};
  const atom_plugin_api* v3 = NULL;
  const char* error = NULL;
  atom_plugin_registration* r = NULL;
  atom_plugin_pipeline* p = NULL;
  atom_plugin_pipeline_info info;
  size_t k;
  CHECK_OK(api->register_plugin(defaults, &r));
  if (r == NULL) return;
  for (k = 0; k < 3; ++k) {
    const atom_plugin_load_options options = {"host", 17, cache_kinds[k]};
    const int64_t tokens[2] = {3, 17};
    size_t n;
    p = NULL;
    CHECK_OK(api->load_pipeline(r, dir, 1, "layer", &options, &p));
    if (p == NULL) continue;
    CHECK_OK(api->pipeline_info(p, &info));
    CHECK(info.cache_kind == cache_kinds[k]);
    CHECK(info.cache_kv_heads > 0 && info.cache_head_dim > 0);
    CHECK(info.cache_row == info.cache_kv_heads * info.cache_head_dim);
    for (n = 0; n < 2; ++n) {
      decode_batch first;
      decode_batch second;
      size_t e;
      size_t unwritten = 0;
      const size_t rows = (size_t)(info.block_size * info.cache_kv_heads);
      if (batch_make(&first, api, p, tokens[n], 40, 30 + n) != 0 ||
          batch_make(&second, api, p, tokens[n], 40, 30 + n) != 0) {
        CHECK(!"batch_make");
        continue;
      }
      CHECK(first.sizes.key_cache ==
            (size_t)first.args.shape.num_blocks * rows * (size_t)info.cache_head_dim);
      CHECK(first.sizes.key_scale == (k == 0   ? (size_t)first.args.shape.num_blocks * rows
                                      : k == 1 ? 1u
                                               : 0u));
      CHECK(first.sizes.value_scale == first.sizes.key_scale);
      CHECK_OK(api->run(p, &first.args, NULL));
      CHECK_OK(api->run(p, &second.args, NULL));
      for (e = 0; e < first.sizes.out; ++e) unwritten += batch_bf16_nonfinite(first.out[e]);
      CHECK(unwritten == 0);
      CHECK(memcmp(first.out, second.out, first.sizes.out * 2) == 0);
      CHECK(memcmp(first.key_cache, second.key_cache,
                   first.sizes.key_cache * first.kv_element_size) == 0);
      batch_free(&first);
      batch_free(&second);
    }
    test_bad_run_args(p, 3);
    api->destroy_pipeline(p);
  }
  {
    atom_plugin_load_options bad = {"host", 4, 5};
    p = (atom_plugin_pipeline*)&p;
    CHECK_FAILS(api->load_pipeline(r, dir, 1, "layer", &bad, &p),
                ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "options.kv_cache is 5, not a cache kind");
    CHECK(p == NULL);
    bad.kv_cache = ATOM_PLUGIN_CACHE_MLA_LATENT;
    CHECK_FAILS(api->load_pipeline(r, dir, 1, "attention", &bad, &p),
                ATOM_PLUGIN_ERROR_INVALID_ARGUMENT, "ATOM_PLUGIN_CACHE_MLA_LATENT");
    /* Version 3's options end at max_tokens: what follows is not read. */
    CHECK(get_api(3, &v3, &error) == ATOM_PLUGIN_OK);
    p = NULL;
    if (v3 != NULL) CHECK_OK(v3->load_pipeline(r, dir, 1, "layer", &bad, &p));
    if (p != NULL) {
      CHECK_OK(api->pipeline_info(p, &info));
      CHECK(info.cache_kind == ATOM_PLUGIN_CACHE_FP8_KV);
      api->destroy_pipeline(p);
    }
  }
  api->release_registration(r);
}

int main(int argc, char** argv) {
  void* lib;
  atom_plugin_get_api_fn get_api;
  const char* error = NULL;
  const char* mode;
  if (argc < 3) {
    fprintf(stderr, "usage: %s <libatom_plugin.so> <mode> [args]\n", argv[0]);
    return 2;
  }
  lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
    return 2;
  }
  *(void**)(&get_api) = dlsym(lib, ATOM_PLUGIN_ENTRY_POINT);
  if (get_api == NULL) {
    fprintf(stderr, "dlsym %s: %s\n", ATOM_PLUGIN_ENTRY_POINT, dlerror());
    return 2;
  }
  if (get_api(ATOM_PLUGIN_ABI_VERSION, &api, &error) != ATOM_PLUGIN_OK) {
    fprintf(stderr, "atom_plugin_get_api: %s\n", error);
    return 2;
  }
  mode = argv[2];
  if (strcmp(mode, "registration") == 0 && argc == 5)
    test_registration(atoi(argv[3]), atoi(argv[4]));
  else if (strcmp(mode, "settings") == 0)
    test_settings();
  else if (strcmp(mode, "invalid-env") == 0)
    test_invalid_env();
  else if (strcmp(mode, "env-warning") == 0)
    test_env_warning();
  else if (strcmp(mode, "version") == 0)
    test_version(get_api);
  else if (strcmp(mode, "bad-input") == 0)
    test_bad_input();
  else if (strcmp(mode, "run") == 0)
    test_run();
  else if (strcmp(mode, "kv-caches") == 0 && argc == 4)
    test_kv_caches(get_api, argv[3]);
  else {
    fprintf(stderr, "unknown mode '%s'\n", mode);
    return 2;
  }
  dlclose(lib);
  if (failures > 0) fprintf(stderr, "%d check(s) failed\n", failures);
  return failures == 0 ? 0 : 1;
}
