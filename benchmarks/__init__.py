"""w2w's benchmarks: stage throughput against limits and baselines, and map quality."""
