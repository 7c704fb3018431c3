# The whole model against the independent PyTorch implementation (tests/torch_ref): loss and every
# gradient, per architecture and dtype. Skipped (exit 77) only when torch is not importable.
add_executable(ref_dump ${CMAKE_CURRENT_LIST_DIR}/ref_dump.cpp)
target_link_libraries(ref_dump PRIVATE scmoe_lib)
find_program(SCMOE_TORCH_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)

function(scmoe_reference_test name)
  set(dump ${CMAKE_CURRENT_BINARY_DIR}/${name}.safetensors)
  string(JOIN " " overrides ${ARGN})
  add_test(NAME ${name}
           COMMAND sh -c "$<TARGET_FILE:ref_dump> ${dump} ${overrides} && ${SCMOE_TORCH_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/compare.py ${dump}")
  set_tests_properties(${name} PROPERTIES LABELS reference SKIP_RETURN_CODE 77 TIMEOUT 300)
endfunction()

scmoe_reference_test(reference_dense_layernorm_f64 train.dtype=float64)
scmoe_reference_test(reference_dense_rmsnorm_f64 train.dtype=float64 model.norm=rmsnorm)
scmoe_reference_test(reference_dense_f32 train.dtype=float32)
add_test(NAME reference_selftest COMMAND ${SCMOE_TORCH_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/compare.py --self-test)
set_tests_properties(reference_selftest PROPERTIES LABELS reference SKIP_RETURN_CODE 77 TIMEOUT 300)

# MoE family: every architecture, with drops (capacity 0.5), dropless, ScMoE-2, every combine and position.
set(SCMOE_REF_MOE train.dtype=float64 model.n_layer=4 moe.num_experts=4 moe.z_loss_coef=0.01 moe.aux_loss_coef=0.1)
scmoe_reference_test(reference_moe_top2_f64 ${SCMOE_REF_MOE} model.arch=moe moe.top_k=2)
scmoe_reference_test(reference_moe_top1_drops_f64 ${SCMOE_REF_MOE} model.arch=moe moe.top_k=1 moe.capacity_factor=0.5)
scmoe_reference_test(reference_moe_dropless_k4_f64 ${SCMOE_REF_MOE} model.arch=moe moe.top_k=4 moe.capacity_factor=0)
scmoe_reference_test(reference_shared_expert_f64 ${SCMOE_REF_MOE} model.arch=shared_expert)
foreach(pos 1 2 3)
  foreach(comb add cg1 cg2)
    scmoe_reference_test(reference_scmoe_pos${pos}_${comb}_f64 ${SCMOE_REF_MOE} model.arch=scmoe scmoe.position=${pos} scmoe.combine=${comb})
  endforeach()
endforeach()
scmoe_reference_test(reference_scmoe2_drops_f64 ${SCMOE_REF_MOE} model.arch=scmoe moe.top_k=2 moe.capacity_factor=0.5)
scmoe_reference_test(reference_scmoe_pos1_every1_rms_f64 ${SCMOE_REF_MOE} model.arch=scmoe scmoe.position=1 moe.every=1 model.norm=rmsnorm)
scmoe_reference_test(reference_scmoe_f32 train.dtype=float32 model.n_layer=4 moe.num_experts=4 model.arch=scmoe)
# Load balancing as current practice does it: sigmoid scores, the expert bias (random, as learnt; it
# changes choices and must leave every gradient that of the gates chosen) and the sequence-level loss.
scmoe_reference_test(reference_moe_top2_sigmoid_bias_seq_f64 ${SCMOE_REF_MOE} model.arch=moe moe.top_k=2
                     moe.score=sigmoid moe.expert_bias.enabled=true moe.seq_aux_loss_coef=0.05)
scmoe_reference_test(reference_moe_top2_bias_drops_f64 ${SCMOE_REF_MOE} model.arch=moe moe.top_k=2
                     moe.expert_bias.enabled=true moe.capacity_factor=0.5 moe.seq_aux_loss_coef=0.05)
scmoe_reference_test(reference_scmoe_pos2_sigmoid_bias_seq_f64 ${SCMOE_REF_MOE} model.arch=scmoe
                     moe.score=sigmoid moe.expert_bias.enabled=true moe.seq_aux_loss_coef=0.05)
scmoe_reference_test(reference_moe_sigmoid_bias_seq_f32 train.dtype=float32 model.n_layer=4 moe.num_experts=4
                     model.arch=moe moe.score=sigmoid moe.expert_bias.enabled=true moe.seq_aux_loss_coef=0.05)
