set(SCMOE_EMU_DEPS_gpt_cuda all)
