set(SCMOE_EMU_DEPS_attention matmul)
