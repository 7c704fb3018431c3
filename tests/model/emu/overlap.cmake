# The overlapped schedule on the CUDA backend (tests/model/emu/overlap.cpp): the whole model, one executable
# run as several tests: "test name|ranks (through train/launch)|argument".
set(SCMOE_EMU_DEPS_overlap all)
set(SCMOE_EMU_RUNS_overlap "emu_overlap_1rank|1|1rank" "emu_overlap_2ranks|2|2ranks" "emu_stream_mutation|1|mutation"
    "emu_overlap_host_sync|1|host_sync" "emu_overlap_tsan|1|tsan")
# Run by scripts/sanitize.sh thread as well (label tsan): small enough for ThreadSanitizer.
set(SCMOE_EMU_TSAN_overlap emu_overlap_tsan emu_overlap_host_sync)
set(SCMOE_EMU_MODEL_overlap TRUE)  # the whole model: label model
