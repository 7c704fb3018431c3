set(SCMOE_EMU_DEPS_infer_cuda all)
