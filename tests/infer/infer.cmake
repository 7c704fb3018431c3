# Inference tests beyond the auto-registered tests/<group>/test_*.cpp: the measured offloading property runs
# with the machine to itself (it times threads), and the end-to-end tests of `train generate`
# (tests/infer/generate_tests.sh holds the cases): determinism, offloading on == off in every migration mode,
# sharded checkpoints, tokenizers, documented errors; generate_cuda the same on a GPU (label gpu).
set_tests_properties(test_offload_timing PROPERTIES RUN_SERIAL TRUE)
foreach(case basic offload_scmoe offload_moe sharded bias tokenizer errors)
  add_test(NAME generate_${case}
           COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/generate_tests.sh $<TARGET_FILE:train> ${CMAKE_SOURCE_DIR} ${case})
  set_tests_properties(generate_${case} PROPERTIES LABELS "unit;e2e" TIMEOUT 300 WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
endforeach()
# The same on the GPU: skipped (77) without a usable CUDA device.
add_test(NAME generate_cuda COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/generate_tests.sh $<TARGET_FILE:train> ${CMAKE_SOURCE_DIR} cuda)
set_tests_properties(generate_cuda PROPERTIES LABELS "gpu;e2e" TIMEOUT 300 SKIP_RETURN_CODE 77
                     WORKING_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
