"""The step benchmark's parts, one job each: the workload (model shapes, batches), the variants
it compares, timing, memory workers, the hardware's peak rates, the target-layer sweep and the
report. `benchmarks/step_bench.py` runs them; `forget_loss_bench.py` and `lora_paths_bench.py`
reuse them."""
