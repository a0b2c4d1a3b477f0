"""Stage `measure`: greedy generation and its measures (evaluate), server answers compared (compare), engines
compared (enginecmp), and FP8 simulated (fp8)."""
