# The fused residual + norm kernels are checked bit for bit against the norm family's forward.
set(SCMOE_EMU_DEPS_elementwise norm)
