"""Metrics, the benchmark, the ablation and the step-time bench."""
