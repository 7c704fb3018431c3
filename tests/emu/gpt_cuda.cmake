set(SCMOE_EMU_DEPS_gpt_cuda adamw attention crossentropy elementwise encoder gelu matmul norm router permute gates)
list(APPEND SCMOE_EMU_DEPS_gpt_cuda device_memory)
