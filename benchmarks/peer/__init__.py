"""Side-by-side benchmarks of HFX against the simplest peer (vllm-router + vLLM) on the same engines."""
