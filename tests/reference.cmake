# The whole model against the independent PyTorch implementation (tests/torch_ref): loss and every
# gradient, per architecture and dtype. Skipped (exit 77) only when torch is not importable.
add_executable(ref_dump ${CMAKE_CURRENT_SOURCE_DIR}/ref_dump.cpp)
target_link_libraries(ref_dump PRIVATE scmoe_lib)
find_program(SCMOE_TORCH_PYTHON NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)

function(scmoe_reference_test name)
  set(dump ${CMAKE_CURRENT_BINARY_DIR}/${name}.safetensors)
  string(JOIN " " overrides ${ARGN})
  add_test(NAME ${name}
           COMMAND sh -c "$<TARGET_FILE:ref_dump> ${dump} ${overrides} && ${SCMOE_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/torch_ref/compare.py ${dump}")
  set_tests_properties(${name} PROPERTIES LABELS reference SKIP_RETURN_CODE 77 TIMEOUT 300)
endfunction()

scmoe_reference_test(reference_dense_layernorm_f64 train.dtype=float64)
scmoe_reference_test(reference_dense_rmsnorm_f64 train.dtype=float64 model.norm=rmsnorm)
scmoe_reference_test(reference_dense_f32 train.dtype=float32)
add_test(NAME reference_selftest COMMAND ${SCMOE_TORCH_PYTHON} ${CMAKE_CURRENT_SOURCE_DIR}/torch_ref/compare.py --self-test)
set_tests_properties(reference_selftest PROPERTIES LABELS reference SKIP_RETURN_CODE 77 TIMEOUT 300)
