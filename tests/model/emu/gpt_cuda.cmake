set(SCMOE_EMU_DEPS_gpt_cuda all)
set(SCMOE_EMU_MODEL_gpt_cuda TRUE)  # the whole model: label model
