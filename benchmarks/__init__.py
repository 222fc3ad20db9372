"""Benchmarks: latency, throughput and accuracy, recorded in benchmarks/results/."""
