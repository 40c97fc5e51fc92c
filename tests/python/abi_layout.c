/* Prints the layout of every struct of atom_plugin.h as JSON ({"name": {"size": N, "fields":
 * {"field": offset, ...}}, ...}), for the test that checks the Python binding's ctypes mirrors
 * against what the C compiler makes of the header, and under "constants" the values of the
 * header's version and cache kinds the binding restates. A field the header drops fails to
 * compile; a field it adds changes the struct's size. */
#include <stddef.h>
#include <stdio.h>

#include "atom/plugin/atom_plugin.h"

static int first_struct = 1;
static int first_field = 1;

static void begin(const char* name, size_t size) {
  printf("%s\"%s\": {\"size\": %zu, \"fields\": {", first_struct ? "" : ", ", name, size);
  first_struct = 0;
  first_field = 1;
}
static void field(const char* name, size_t offset) {
  printf("%s\"%s\": %zu", first_field ? "" : ", ", name, offset);
  first_field = 0;
}
static void end(void) {
  printf("}}");
}

#define BEGIN(s) begin(#s, sizeof(s))
#define FIELD(s, f) field(#f, offsetof(s, f))
#define CONSTANT(c) field(#c, (size_t)(c))
#define COUNTED(s, f) \
  FIELD(s, f);        \
  FIELD(s, f##_count)

int main(void) {
  printf("{");
  BEGIN(atom_plugin_registration_info);
  FIELD(atom_plugin_registration_info, plugin_enabled);
  FIELD(atom_plugin_registration_info, attention_enabled);
  FIELD(atom_plugin_registration_info, model_count);
  FIELD(atom_plugin_registration_info, attention_backend_count);
  FIELD(atom_plugin_registration_info, warnings);
  end();
  BEGIN(atom_plugin_model);
  FIELD(atom_plugin_model, architecture);
  FIELD(atom_plugin_model, layer_pipeline);
  FIELD(atom_plugin_model, attention_pipeline);
  FIELD(atom_plugin_model, moe_pipeline);
  FIELD(atom_plugin_model, attention_backend);
  FIELD(atom_plugin_model, presets);
  FIELD(atom_plugin_model, preset_count);
  end();
  BEGIN(atom_plugin_attention_backend);
  FIELD(atom_plugin_attention_backend, name);
  FIELD(atom_plugin_attention_backend, pipeline);
  FIELD(atom_plugin_attention_backend, cache_layout);
  end();
  BEGIN(atom_plugin_pipeline_info);
  FIELD(atom_plugin_pipeline_info, architecture);
  FIELD(atom_plugin_pipeline_info, kind);
  FIELD(atom_plugin_pipeline_info, preset);
  FIELD(atom_plugin_pipeline_info, pipeline);
  FIELD(atom_plugin_pipeline_info, instance);
  FIELD(atom_plugin_pipeline_info, backend);
  FIELD(atom_plugin_pipeline_info, hidden);
  FIELD(atom_plugin_pipeline_info, block_size);
  FIELD(atom_plugin_pipeline_info, max_position);
  FIELD(atom_plugin_pipeline_info, cache_kind);
  FIELD(atom_plugin_pipeline_info, cache_row);
  FIELD(atom_plugin_pipeline_info, cache_kv_heads);
  FIELD(atom_plugin_pipeline_info, cache_head_dim);
  end();
  BEGIN(atom_plugin_batch_shape);
  FIELD(atom_plugin_batch_shape, tokens);
  FIELD(atom_plugin_batch_shape, max_blocks_per_token);
  FIELD(atom_plugin_batch_shape, num_blocks);
  end();
  BEGIN(atom_plugin_buffer_sizes);
  FIELD(atom_plugin_buffer_sizes, x);
  FIELD(atom_plugin_buffer_sizes, residual);
  FIELD(atom_plugin_buffer_sizes, out);
  FIELD(atom_plugin_buffer_sizes, positions);
  FIELD(atom_plugin_buffer_sizes, slots);
  FIELD(atom_plugin_buffer_sizes, block_table);
  FIELD(atom_plugin_buffer_sizes, context_lens);
  FIELD(atom_plugin_buffer_sizes, mla_cache);
  FIELD(atom_plugin_buffer_sizes, key_cache);
  FIELD(atom_plugin_buffer_sizes, value_cache);
  FIELD(atom_plugin_buffer_sizes, key_scale);
  FIELD(atom_plugin_buffer_sizes, value_scale);
  end();
  BEGIN(atom_plugin_run_args);
  FIELD(atom_plugin_run_args, shape);
  COUNTED(atom_plugin_run_args, x);
  COUNTED(atom_plugin_run_args, residual);
  COUNTED(atom_plugin_run_args, out);
  COUNTED(atom_plugin_run_args, positions);
  COUNTED(atom_plugin_run_args, slots);
  COUNTED(atom_plugin_run_args, block_table);
  COUNTED(atom_plugin_run_args, context_lens);
  COUNTED(atom_plugin_run_args, mla_cache);
  COUNTED(atom_plugin_run_args, key_cache);
  COUNTED(atom_plugin_run_args, value_cache);
  COUNTED(atom_plugin_run_args, key_scale);
  COUNTED(atom_plugin_run_args, value_scale);
  end();
  BEGIN(atom_plugin_load_options);
  FIELD(atom_plugin_load_options, backend);
  FIELD(atom_plugin_load_options, max_tokens);
  FIELD(atom_plugin_load_options, kv_cache);
  end();
  BEGIN(atom_plugin_sequence_shape);
  FIELD(atom_plugin_sequence_shape, tokens);
  FIELD(atom_plugin_sequence_shape, sequences);
  FIELD(atom_plugin_sequence_shape, max_blocks_per_sequence);
  FIELD(atom_plugin_sequence_shape, num_blocks);
  end();
  BEGIN(atom_plugin_sequence_sizes);
  FIELD(atom_plugin_sequence_sizes, x);
  FIELD(atom_plugin_sequence_sizes, residual);
  FIELD(atom_plugin_sequence_sizes, out);
  FIELD(atom_plugin_sequence_sizes, query_start);
  FIELD(atom_plugin_sequence_sizes, context_lens);
  FIELD(atom_plugin_sequence_sizes, block_table);
  FIELD(atom_plugin_sequence_sizes, positions);
  FIELD(atom_plugin_sequence_sizes, slots);
  FIELD(atom_plugin_sequence_sizes, mla_cache);
  FIELD(atom_plugin_sequence_sizes, key_cache);
  FIELD(atom_plugin_sequence_sizes, value_cache);
  FIELD(atom_plugin_sequence_sizes, key_scale);
  FIELD(atom_plugin_sequence_sizes, value_scale);
  end();
  BEGIN(atom_plugin_sequence_args);
  FIELD(atom_plugin_sequence_args, shape);
  COUNTED(atom_plugin_sequence_args, x);
  COUNTED(atom_plugin_sequence_args, residual);
  COUNTED(atom_plugin_sequence_args, out);
  COUNTED(atom_plugin_sequence_args, query_start);
  COUNTED(atom_plugin_sequence_args, context_lens);
  COUNTED(atom_plugin_sequence_args, block_table);
  COUNTED(atom_plugin_sequence_args, positions);
  COUNTED(atom_plugin_sequence_args, slots);
  COUNTED(atom_plugin_sequence_args, mla_cache);
  COUNTED(atom_plugin_sequence_args, key_cache);
  COUNTED(atom_plugin_sequence_args, value_cache);
  COUNTED(atom_plugin_sequence_args, key_scale);
  COUNTED(atom_plugin_sequence_args, value_scale);
  end();
  BEGIN(atom_plugin_communicator);
  FIELD(atom_plugin_communicator, rank);
  FIELD(atom_plugin_communicator, size);
  FIELD(atom_plugin_communicator, context);
  FIELD(atom_plugin_communicator, all_reduce_bf16);
  end();
  BEGIN(atom_plugin_api);
  FIELD(atom_plugin_api, abi_version);
  FIELD(atom_plugin_api, struct_size);
  FIELD(atom_plugin_api, last_error);
  FIELD(atom_plugin_api, register_plugin);
  FIELD(atom_plugin_api, release_registration);
  FIELD(atom_plugin_api, registration_info);
  FIELD(atom_plugin_api, model);
  FIELD(atom_plugin_api, attention_backend);
  FIELD(atom_plugin_api, create_pipeline);
  FIELD(atom_plugin_api, destroy_pipeline);
  FIELD(atom_plugin_api, pipeline_info);
  FIELD(atom_plugin_api, buffer_sizes);
  FIELD(atom_plugin_api, run);
  FIELD(atom_plugin_api, load_pipeline);
  FIELD(atom_plugin_api, sequence_sizes);
  FIELD(atom_plugin_api, run_sequences);
  FIELD(atom_plugin_api, workspace);
  FIELD(atom_plugin_api, load_pipeline_tp);
  end();
  printf(", \"constants\": {");
  first_field = 1;
  CONSTANT(ATOM_PLUGIN_ABI_VERSION);
  CONSTANT(ATOM_PLUGIN_CACHE_NONE);
  CONSTANT(ATOM_PLUGIN_CACHE_MLA_LATENT);
  CONSTANT(ATOM_PLUGIN_CACHE_FP8_KV);
  CONSTANT(ATOM_PLUGIN_CACHE_KV_FP8_TENSOR);
  CONSTANT(ATOM_PLUGIN_CACHE_KV_BF16);
  printf("}}\n");
  return 0;
}
