# Expert parallelism on the CUDA backend: the whole model, and 2 ranks through train/launch.
set(SCMOE_EMU_DEPS_gpt_cuda_ep all)
set(SCMOE_EMU_RANKS_gpt_cuda_ep 2)
set(SCMOE_EMU_MODEL_gpt_cuda_ep TRUE)  # the whole model: label model
