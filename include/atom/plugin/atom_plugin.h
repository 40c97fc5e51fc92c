/* The atom plugin ABI: how a host inference engine discovers and runs what atom provides.
 *
 * A plain C99 header. Nothing of C++ crosses it: opaque handles, fixed-width integers, structs
 * of plain data, and one table of function pointers. The shared library libatom_plugin.so
 * exports exactly one symbol, atom_plugin_get_api (ATOM_PLUGIN_ENTRY_POINT); a host dlopens
 * the library, looks that symbol up and asks for the ABI version it was compiled against.
 *
 * Registration honours two variables (read through atom's Config, so their spellings and
 * errors are those of every other ATOM_* variable):
 *   ATOM_DISABLE_VLLM_PLUGIN=1            nothing is registered: no models, no attention
 *                                         backends; every pipeline request is refused.
 *   ATOM_DISABLE_VLLM_PLUGIN_ATTENTION=1  the models are registered with their MoE pipelines
 *                                         only; the attention backends are not, so the host
 *                                         engine's own attention is used (pipelines that
 *                                         contain attention, "attention" and "layer", are
 *                                         refused).
 *
 * Errors. Every function that can fail returns an atom_plugin_status; ATOM_PLUGIN_OK is 0. On
 * failure api->last_error() returns a message naming what was wrong (the argument, the buffer,
 * the variable); it is per thread and stays valid until the next call on that thread. Bad input
 * never crashes: null pointers, short buffers, unknown names and out-of-range batch data are
 * reported before anything is written.
 *
 * Strings returned in the info structs are owned by the plugin: those of registrations and
 * models live as long as the library is loaded, those of a pipeline until it is destroyed.
 *
 * Versions. atom_plugin_get_api answers version 4 (this header), 3, 2 and 1:
 *   1  registration, preset pipelines (create_pipeline) and the per-token run.
 *   2  checkpoint layers (load_pipeline with atom_plugin_load_options), the per-sequence batch
 *      (sequence_sizes, run_sequences), workspace, the GPU backend.
 *   3  tensor parallelism (load_pipeline_tp, atom_plugin_communicator).
 *   4  the GQA KV cache kinds (see KV caches): atom_plugin_load_options grows kv_cache at its
 *      end; the run args' key_cache and value_cache are `void*` (same size and place as version
 *      3's uint8_t*), their element type the pipeline's cache kind. No function is added.
 * An older version's table is the same table without the later functions (its struct_size ends
 * before them), and its load_pipeline / load_pipeline_tp read the options struct of that version
 * (backend and max_tokens, up to kv_cache; the cache is then ATOM_PLUGIN_CACHE_FP8_KV), so a host
 * compiled against version 1, 2 or 3 keeps working unchanged. The version a host asks for is the
 * one whose structs it passes.
 *
 * Weights. A pipeline owns its weights: those of one decoder layer of a Hugging Face checkpoint
 * folder (load_pipeline, version 2), read in the formats the checkpoint stores, or deterministic
 * random weights generated from a seed with the dimensions of a model preset (create_pipeline),
 * as atom's tests and atom-run use them (the full-size presets get full-size weights: gigabytes,
 * generated in seconds to minutes).
 *
 * Batches. Version 2 runs the per-sequence batch (run_sequences), the form vLLM and FlashMLA
 * use: S sequences, sequence s owning the query tokens query_start[s] .. query_start[s + 1] - 1
 * (1 in plain decode, 2 or more for speculative decoding) with its context length and its row of
 * the block table; per token a position and a slot, -1 meaning a padded token that writes no
 * cache row and whose attention output is zero. Version 1's run takes one sequence per token.
 *
 * Backends. A pipeline runs on the host (CPU) backend or, in a build of the plugin with a GPU
 * backend (built with nvcc or hipcc), on the GPU: load_pipeline's options pick it, and
 * pipeline_info's `backend` says which ("host" or "gpu"). create_pipeline and run (version 1)
 * are host only.
 *
 * Streams. run() and run_sequences() take a `stream` owned by the host (a cudaStream_t or
 * hipStream_t). The host backend runs synchronously on the calling thread and ignores it (NULL is
 * accepted). A GPU pipeline enqueues its kernels on `stream` (NULL: the legacy default stream)
 * and returns without synchronising and without host-device copies. The pipeline's workspace is
 * sized at load for max_tokens; some GPU ops also keep scratch per host thread and stream, sized
 * by their first call of a shape on that stream. So a call can be captured into the host's
 * CUDA/HIP graph and replayed once one eager call of the same shape has run on the capture stream
 * from the same thread (the warm-up graph capture asks for anyway); a capture that would grow the
 * scratch fails with the runtime's capture error instead.
 *
 * Memory. A host pipeline reads and writes host memory. A GPU pipeline's run_sequences takes
 * device pointers of the current device for every buffer (activations, batch, caches); the host
 * cannot read the batch without a sync, so only pointers, counts and overlaps are checked before
 * the launch, and the kernels check every entry: a token whose batch data is bad gets NaN outputs,
 * and no cache row outside the cache is ever written.
 *
 * Threads. Registrations are immutable and may be shared between threads. A pipeline holds
 * scratch memory: run one pipeline from one thread at a time.
 *
 * KV caches (version 4). A GQA model's attention (Qwen3: the "layer" and "attention" kinds) is
 * loaded for one cache kind, options.kv_cache, and runs only on caches of that kind;
 * pipeline_info's cache_kind says which. Each of key_cache and value_cache is
 * [num_blocks, block_size, kv_heads, head_dim] contiguous (what vLLM's flash-attn backend's
 * kv_cache[0] and kv_cache[1] are, SGLang's k_buffer and v_buffer of a layer), kv_heads the
 * rank's (pipeline_info's cache_kv_heads):
 *   ATOM_PLUGIN_CACHE_FP8_KV        (fp8_row, the default) FP8 e4m3 codes, one byte each, and
 *                                   key_scale, value_scale [num_blocks, block_size, kv_heads]
 *                                   float: a row's scale is its amax / 448, written by the run
 *                                   with the row (atom's own format).
 *   ATOM_PLUGIN_CACHE_KV_FP8_TENSOR (fp8_tensor) FP8 e4m3 codes, one byte each, and key_scale,
 *                                   value_scale one float each (count 1): vLLM's and SGLang's
 *                                   k_scale and v_scale. An element is code * scale; a row is
 *                                   stored as to_fp8(x / scale), rounded to nearest even and
 *                                   saturated to +-448. The scales are read, never written.
 *   ATOM_PLUGIN_CACHE_KV_BF16       (bf16) bf16 values, two bytes each (as their 16 bits); no
 *                                   scales (key_scale and value_scale are ignored, may be NULL).
 * buffer_sizes and sequence_sizes give the counts of the pipeline's kind, in its elements. The
 * checks before a run are the pointers, the counts and the overlaps of the buffers the kind reads
 * (a missing scale is ATOM_PLUGIN_ERROR_NULL_POINTER naming args.key_scale or args.value_scale);
 * on the host backend also the per-tensor scales' values (positive and finite). A GPU pipeline's
 * scales are device memory, which the host cannot read without a sync: they are not checked, and
 * a zero, negative or non-finite scale gives non-finite outputs, never a write outside the cache.
 * The MLA latent cache (DeepSeek-V3) and the moe kind ignore options.kv_cache.
 *
 * Tensor parallelism (version 3). load_pipeline_tp loads one rank's share of a layer: query heads
 * split across the ranks, GQA KV heads split while the size divides them (replicated beyond,
 * each rank holding the KV head of its query heads), MLA's latent cache replicated, routed
 * experts split on their intermediate dimension (expert parallel where a split would cut a quant
 * group), the dense MLP and the shared experts split alike, norms and router replicated. The
 * rank's cache holds its KV heads only (pipeline_info's cache_kv_heads). Every block begins by
 * all-reducing its input x through the engine's communicator into the residual add and RMSNorm,
 * and ends with its rank's partial sum in `out`. So the residual stream is the same on every
 * rank, and x of a rank's first call is its share of the hidden state to add to it (the partial
 * sums of the previous layer; for the first layer, zeros on every rank with the hidden state in
 * the residual); the engine all-reduces the last block's `out` itself when it needs the sum.
 * Every rank runs the same calls on the same batch, in the same order.
 */
#ifndef ATOM_PLUGIN_H
#define ATOM_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any change to the structs or the function table below. */
#define ATOM_PLUGIN_ABI_VERSION 4u
#define ATOM_PLUGIN_ENTRY_POINT "atom_plugin_get_api"

typedef int32_t atom_plugin_status;
#define ATOM_PLUGIN_OK 0
#define ATOM_PLUGIN_ERROR_ABI_VERSION 1          /* the requested ABI version is not provided */
#define ATOM_PLUGIN_ERROR_NULL_POINTER 2         /* a required pointer is NULL */
#define ATOM_PLUGIN_ERROR_INVALID_ARGUMENT 3     /* a value is out of range or inconsistent */
#define ATOM_PLUGIN_ERROR_BUFFER_TOO_SMALL 4     /* a buffer holds fewer elements than needed */
#define ATOM_PLUGIN_ERROR_UNKNOWN_ARCHITECTURE 5 /* no model serves that architecture */
#define ATOM_PLUGIN_ERROR_UNKNOWN_NAME 6         /* unknown pipeline kind, preset or setting */
#define ATOM_PLUGIN_ERROR_CONFIG 7               /* an ATOM_* value does not parse */
#define ATOM_PLUGIN_ERROR_NOT_REGISTERED 8       /* disabled by ATOM_DISABLE_VLLM_PLUGIN* */
#define ATOM_PLUGIN_ERROR_NO_INSTANCE 9          /* this build has no instantiation for it */
#define ATOM_PLUGIN_ERROR_OUT_OF_MEMORY 10
#define ATOM_PLUGIN_ERROR_INTERNAL 11
#define ATOM_PLUGIN_ERROR_CHECKPOINT \
  12 /* version 2: the checkpoint cannot be read as its config says */
#define ATOM_PLUGIN_ERROR_COMMUNICATOR \
  13 /* version 3: the engine's all_reduce_bf16 failed; the run's outputs are unspecified */

typedef struct atom_plugin_registration atom_plugin_registration;
typedef struct atom_plugin_pipeline atom_plugin_pipeline;

typedef struct atom_plugin_registration_info {
  int32_t plugin_enabled;    /* 0 when ATOM_DISABLE_VLLM_PLUGIN is set */
  int32_t attention_enabled; /* 0 when either variable is set */
  size_t model_count;
  size_t attention_backend_count;
  /* Warnings while reading the settings (unknown ATOM_* names), one per line; "" if none. */
  const char* warnings;
} atom_plugin_registration_info;

/* A model: which pipelines serve a Hugging Face architecture. A pipeline name is NULL when
 * that kind is not registered (the attention-bearing kinds under
 * ATOM_DISABLE_VLLM_PLUGIN_ATTENTION). */
typedef struct atom_plugin_model {
  const char* architecture;       /* "DeepseekV3ForCausalLM", "Qwen3MoeForCausalLM" */
  const char* layer_pipeline;     /* kind "layer": attention then MoE, e.g. "ds_layer" */
  const char* attention_pipeline; /* kind "attention", e.g. "mla_attention" */
  const char* moe_pipeline;       /* kind "moe": "moe_block" */
  const char* attention_backend;  /* name of its attention backend, NULL if not registered */
  const char* const* presets;     /* model presets a pipeline can be created from */
  size_t preset_count;
} atom_plugin_model;

typedef struct atom_plugin_attention_backend {
  const char* name;         /* "mla", "paged_gqa" */
  const char* pipeline;     /* "mla_attention", "qwen3_attention" */
  const char* cache_layout; /* the KV cache it reads and writes, in words */
} atom_plugin_attention_backend;

/* The cache a pipeline reads and writes (see KV caches above for the GQA kinds). */
typedef int32_t atom_plugin_cache_kind;
#define ATOM_PLUGIN_CACHE_NONE 0       /* the MoE block reads no cache */
#define ATOM_PLUGIN_CACHE_MLA_LATENT 1 /* bf16 [num_blocks, block_size, kv_lora + rope] */
#define ATOM_PLUGIN_CACHE_FP8_KV 2     /* fp8 e4m3 key/value, float scale per token and head */
#define ATOM_PLUGIN_CACHE_KV_FP8_ROW ATOM_PLUGIN_CACHE_FP8_KV /* version 4's name for it */
#define ATOM_PLUGIN_CACHE_KV_FP8_TENSOR \
  3 /* version 4: fp8 e4m3 key/value, one float scale each for key and value */
#define ATOM_PLUGIN_CACHE_KV_BF16 4 /* version 4: bf16 key/value */

typedef struct atom_plugin_pipeline_info {
  const char* architecture;
  const char* kind;     /* "layer", "attention" or "moe" */
  const char* preset;   /* "deepseek-v3-tiny", ...; a loaded layer: its checkpoint folder */
  const char* pipeline; /* "ds_layer", ... */
  const char* instance; /* the instantiation the settings selected */
  const char* backend;  /* "host" or "gpu" */
  int64_t hidden;
  int64_t block_size;                /* tokens per KV-cache block */
  int64_t max_position;              /* positions must be below it */
  atom_plugin_cache_kind cache_kind; /* version 4: the kind options.kv_cache chose */
  int64_t cache_row;      /* MLA: kv_lora + rope per slot; the GQA kinds: kv_heads * head_dim */
  int64_t cache_kv_heads; /* the GQA kinds only (the rank's KV heads), else 0 */
  int64_t cache_head_dim; /* the GQA kinds only, else 0 */
} atom_plugin_pipeline_info;

/* The size of a decode batch: `tokens` tokens, each with its own context, a block table of
 * `max_blocks_per_token` columns and a cache of `num_blocks` blocks. */
typedef struct atom_plugin_batch_shape {
  int64_t tokens;
  int64_t max_blocks_per_token; /* ignored by the "moe" kind */
  int64_t num_blocks;           /* ignored by the "moe" kind */
} atom_plugin_batch_shape;

/* Element counts each buffer of atom_plugin_run_args needs; 0 for buffers the kind does not
 * read. */
typedef struct atom_plugin_buffer_sizes {
  size_t x, residual, out;          /* bf16 */
  size_t positions, slots;          /* int64 */
  size_t block_table, context_lens; /* int32 */
  size_t mla_cache;                 /* bf16 */
  size_t key_cache, value_cache;    /* the cache kind's elements: fp8 e4m3 codes or bf16 */
  size_t key_scale, value_scale;    /* float: per row (FP8_KV), 1 (KV_FP8_TENSOR), 0 (KV_BF16) */
} atom_plugin_buffer_sizes;

/* One run on host-owned memory. bf16 values are passed as their 16 bits. Each pointer comes
 * with the number of elements it holds; buffers a kind does not read may be NULL.
 *   x            [tokens, hidden]  the previous block's output
 *   residual     [tokens, hidden]  the residual stream, updated in place to x + residual
 *   out          [tokens, hidden]  this block's output
 *   positions    [tokens]          position of each decoded token
 *   slots        [tokens]          cache slot it writes (block * block_size + offset); -1: a
 *                                  padded token, which writes no cache row and attends to
 *                                  nothing (its attention output is zero)
 *   block_table  [tokens, max_blocks_per_token]  cache blocks of each token's context
 *   context_lens [tokens]          context length including the token itself
 * and the cache of the pipeline's cache_kind (written at `slots`):
 *   mla_cache    [num_blocks, block_size, kv_lora + rope]
 *   key_cache, value_cache  [num_blocks, block_size, kv_heads, head_dim], fp8 e4m3 codes (FP8_KV,
 *                KV_FP8_TENSOR) or bf16 (KV_BF16); counts in those elements
 *   key_scale, value_scale  FP8_KV: [num_blocks, block_size, kv_heads]; KV_FP8_TENSOR: [1] each
 *                (two floats apart from each other and the caches), read only; KV_BF16: not read */
typedef struct atom_plugin_run_args {
  atom_plugin_batch_shape shape;
  const uint16_t* x;
  size_t x_count;
  uint16_t* residual;
  size_t residual_count;
  uint16_t* out;
  size_t out_count;
  const int64_t* positions;
  size_t positions_count;
  const int64_t* slots;
  size_t slots_count;
  const int32_t* block_table;
  size_t block_table_count;
  const int32_t* context_lens;
  size_t context_lens_count;
  uint16_t* mla_cache;
  size_t mla_cache_count;
  void* key_cache; /* version 4: void* (version 3: uint8_t*), its elements by the cache kind */
  size_t key_cache_count;
  void* value_cache;
  size_t value_cache_count;
  float* key_scale;
  size_t key_scale_count;
  float* value_scale;
  size_t value_scale_count;
} atom_plugin_run_args;

/* Version 2: how load_pipeline builds a pipeline. */
typedef struct atom_plugin_load_options {
  /* "host", "gpu", or NULL / "auto": the GPU where this build of the plugin has a GPU backend
   * and a GPU is present, else the host. "gpu" without either is refused with
   * ATOM_PLUGIN_ERROR_NO_INSTANCE. */
  const char* backend;
  /* The most tokens one run takes (1..2^24). The workspace is sized for it at creation: a run of
   * at most max_tokens tokens allocates nothing, a larger one is refused. */
  int64_t max_tokens;
  /* Version 4: the GQA cache kind the pipeline reads (see KV caches): ATOM_PLUGIN_CACHE_FP8_KV,
   * ATOM_PLUGIN_CACHE_KV_FP8_TENSOR or ATOM_PLUGIN_CACHE_KV_BF16; ATOM_PLUGIN_CACHE_NONE (0) for
   * the default, FP8_KV. Ignored where the pipeline keeps no GQA cache (the MLA models, the moe
   * kind); another value is ATOM_PLUGIN_ERROR_INVALID_ARGUMENT naming options.kv_cache. Read
   * only through version 4's table: the versions before end their struct at max_tokens. */
  atom_plugin_cache_kind kv_cache;
} atom_plugin_load_options;

/* Version 2: the size of a per-sequence decode batch. */
typedef struct atom_plugin_sequence_shape {
  int64_t tokens;                  /* T, query tokens of all sequences plus padding */
  int64_t sequences;               /* S; ignored by the "moe" kind */
  int64_t max_blocks_per_sequence; /* columns of the block table; ignored by "moe" */
  int64_t num_blocks;              /* blocks of the cache; ignored by "moe" */
} atom_plugin_sequence_shape;

/* Element counts each buffer of atom_plugin_sequence_args needs; 0 for buffers the kind does not
 * read. */
typedef struct atom_plugin_sequence_sizes {
  size_t x, residual, out;          /* bf16 */
  size_t query_start;               /* int32 */
  size_t context_lens, block_table; /* int32 */
  size_t positions, slots;          /* int64 */
  size_t mla_cache;                 /* bf16 */
  size_t key_cache, value_cache;    /* the cache kind's elements: fp8 e4m3 codes or bf16 */
  size_t key_scale, value_scale;    /* float: per row (FP8_KV), 1 (KV_FP8_TENSOR), 0 (KV_BF16) */
} atom_plugin_sequence_sizes;

/* One run of the per-sequence batch on the caller's memory (host memory for a host pipeline,
 * device memory for a GPU pipeline); bf16 values as their 16 bits, each pointer with its element
 * count, buffers a kind does not read may be NULL.
 *   x, residual, out [tokens, hidden]  as in atom_plugin_run_args
 *   query_start  [sequences + 1]  0, then non-decreasing, at most tokens: sequence s owns tokens
 *                                 query_start[s] .. query_start[s + 1] - 1; tokens from
 *                                 query_start[sequences] on must be padding
 *   context_lens [sequences]      cache rows of each sequence, its query tokens' rows included
 *                                 (at least its query count); query token t of sequence s
 *                                 attends to the first context_lens[s] - (query_start[s + 1] -
 *                                 1 - t) rows (causal)
 *   block_table  [sequences, max_blocks_per_sequence]  cache blocks of each sequence's context
 *   positions    [tokens]         position of each token (below max_position)
 *   slots        [tokens]         cache slot it writes (block * block_size + offset), each slot
 *                                 at most once; -1: padding (writes nothing, reads nothing, its
 *                                 attention output is zero)
 *   caches       as in atom_plugin_run_args, of shape.num_blocks blocks */
typedef struct atom_plugin_sequence_args {
  atom_plugin_sequence_shape shape;
  const uint16_t* x;
  size_t x_count;
  uint16_t* residual;
  size_t residual_count;
  uint16_t* out;
  size_t out_count;
  const int32_t* query_start;
  size_t query_start_count;
  const int32_t* context_lens;
  size_t context_lens_count;
  const int32_t* block_table;
  size_t block_table_count;
  const int64_t* positions;
  size_t positions_count;
  const int64_t* slots;
  size_t slots_count;
  uint16_t* mla_cache;
  size_t mla_cache_count;
  void* key_cache; /* version 4: void* (version 3: uint8_t*), its elements by the cache kind */
  size_t key_cache_count;
  void* value_cache;
  size_t value_cache_count;
  float* key_scale;
  size_t key_scale_count;
  float* value_scale;
  size_t value_scale_count;
} atom_plugin_sequence_args;

/* Version 3: a tensor-parallel group the engine holds (an NCCL / RCCL communicator, its own
 * collectives on the host), as one rank sees it. The pipeline keeps a copy of the struct; the
 * context must stay valid while the pipeline exists. */
typedef struct atom_plugin_communicator {
  int32_t rank;  /* 0 .. size - 1 */
  int32_t size;  /* 1 .. 8 */
  void* context; /* handed back to all_reduce_bf16 */
  /* out[i] := the sum over the group of every rank's x[i], `count` bf16 values as their 16 bits
   * (out may be x). Every rank calls it with the same count, in the same order. A host
   * pipeline's buffers are host memory and the sum is complete when it returns; a GPU pipeline's
   * are device memory and the reduction is enqueued on `stream` (the stream the run was given).
   * Returns 0 on success; anything else fails the run with ATOM_PLUGIN_ERROR_COMMUNICATOR. */
  int32_t (*all_reduce_bf16)(void* context, const uint16_t* x, uint16_t* out, uint64_t count,
                             void* stream);
} atom_plugin_communicator;

typedef struct atom_plugin_api {
  uint32_t abi_version; /* ATOM_PLUGIN_ABI_VERSION of the plugin */
  uint32_t struct_size; /* sizeof(atom_plugin_api) of the plugin */

  /* The message of the last failed call on this thread ("" if none). */
  const char* (*last_error)(void);

  /* Reads the settings and registers what they allow. `settings` is NULL to read the process
   * environment, or a NULL-terminated list of name/value pairs, e.g.
   * {"ATOM_DISABLE_VLLM_PLUGIN_ATTENTION", "1", NULL}, read instead of the environment (names
   * not given take their defaults; unknown or repeated names are errors). Invalid values give
   * ATOM_PLUGIN_ERROR_CONFIG naming each variable. Release with release_registration. */
  atom_plugin_status (*register_plugin)(const char* const* settings,
                                        atom_plugin_registration** out);
  void (*release_registration)(atom_plugin_registration* registration); /* NULL is a no-op */
  atom_plugin_status (*registration_info)(const atom_plugin_registration* registration,
                                          atom_plugin_registration_info* out);
  atom_plugin_status (*model)(const atom_plugin_registration* registration, size_t index,
                              atom_plugin_model* out);
  atom_plugin_status (*attention_backend)(const atom_plugin_registration* registration,
                                          size_t index, atom_plugin_attention_backend* out);

  /* A pipeline of `kind` ("layer", "attention" or "moe") for `architecture`, with the
   * dimensions of model `preset` and weights generated from `seed`, running the instantiation
   * the registration's settings select. Independent of the registration once created. */
  atom_plugin_status (*create_pipeline)(const atom_plugin_registration* registration,
                                        const char* architecture, const char* kind,
                                        const char* preset, uint64_t seed,
                                        atom_plugin_pipeline** out);
  void (*destroy_pipeline)(atom_plugin_pipeline* pipeline); /* NULL is a no-op */
  atom_plugin_status (*pipeline_info)(const atom_plugin_pipeline* pipeline,
                                      atom_plugin_pipeline_info* out);
  atom_plugin_status (*buffer_sizes)(const atom_plugin_pipeline* pipeline,
                                     const atom_plugin_batch_shape* shape,
                                     atom_plugin_buffer_sizes* out);
  /* Runs once. Checks every pointer, count and batch entry before writing anything. */
  atom_plugin_status (*run)(atom_plugin_pipeline* pipeline, const atom_plugin_run_args* args,
                            void* stream);

  /* Version 2. */

  /* A pipeline of `kind` ("layer", "attention" or "moe") for decoder layer `layer` (0-based) of
   * the Hugging Face checkpoint folder `checkpoint` (config.json with model.safetensors or
   * model.safetensors.index.json), its weights read in their stored formats (bf16, FP8 with
   * 128x128 block scales, MXFP4), running the instantiation the registration's settings select
   * at those formats. The architecture is the checkpoint's own. A "layer" runs the layer's
   * attention and its MLP, MoE or dense as the config makes that layer; "moe" is refused for a
   * dense layer. `options` may be NULL: the best backend, max_tokens 256, the cache FP8_KV. */
  atom_plugin_status (*load_pipeline)(const atom_plugin_registration* registration,
                                      const char* checkpoint, int64_t layer, const char* kind,
                                      const atom_plugin_load_options* options,
                                      atom_plugin_pipeline** out);
  atom_plugin_status (*sequence_sizes)(const atom_plugin_pipeline* pipeline,
                                       const atom_plugin_sequence_shape* shape,
                                       atom_plugin_sequence_sizes* out);
  /* Runs the per-sequence batch once; checks every pointer and count, and on the host backend
   * every batch entry, before writing anything (see Memory above for the GPU backend). */
  atom_plugin_status (*run_sequences)(atom_plugin_pipeline* pipeline,
                                      const atom_plugin_sequence_args* args, void* stream);
  /* The most tokens one run takes and the bytes of scratch memory held for them. */
  atom_plugin_status (*workspace)(const atom_plugin_pipeline* pipeline, int64_t* max_tokens,
                                  size_t* bytes);

  /* Version 3. */

  /* load_pipeline for rank communicator->rank of a tensor-parallel group of communicator->size
   * ranks (see Tensor parallelism above): the rank reads only its share of the layer's weights,
   * and its runs all-reduce through `communicator`. Not collective: each rank loads on its own.
   * A split the model's dimensions do not allow (query heads not divisible by the size, KV heads
   * neither dividing nor divided by it) is ATOM_PLUGIN_ERROR_INVALID_ARGUMENT naming them. */
  atom_plugin_status (*load_pipeline_tp)(const atom_plugin_registration* registration,
                                         const char* checkpoint, int64_t layer, const char* kind,
                                         const atom_plugin_load_options* options,
                                         const atom_plugin_communicator* communicator,
                                         atom_plugin_pipeline** out);
} atom_plugin_api;

/* The entry point. Sets *api to the function table of `abi_version`, or returns
 * ATOM_PLUGIN_ERROR_ABI_VERSION when this plugin does not provide it. When `error` is not NULL
 * it receives the failure's message (plugin-owned, valid until the next call on this thread),
 * since the table that would offer last_error is not handed out on a mismatch. */
typedef atom_plugin_status (*atom_plugin_get_api_fn)(uint32_t abi_version,
                                                     const atom_plugin_api** api,
                                                     const char** error);
atom_plugin_status atom_plugin_get_api(uint32_t abi_version, const atom_plugin_api** api,
                                       const char** error);

#ifdef __cplusplus
}
#endif

#endif /* ATOM_PLUGIN_H */
