# Expert parallelism on the CUDA backend: the whole-model families, and 2 ranks through train/launch.
set(SCMOE_EMU_DEPS_gpt_cuda_ep gpt_cuda adamw attention crossentropy elementwise encoder gelu matmul norm router
    permute gates device_memory)
set(SCMOE_EMU_RANKS_gpt_cuda_ep 2)
