set(SCMOE_EMU_DEPS_infer_cuda attention elementwise gelu matmul norm router permute gates device_memory
    expert_link_cuda)
