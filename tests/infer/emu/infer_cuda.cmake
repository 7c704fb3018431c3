set(SCMOE_EMU_DEPS_infer_cuda all)
set(SCMOE_EMU_MODEL_infer_cuda TRUE)  # the whole model: label model
