"""Benchmarks that print figures: bulk loading, read latency, HTTP throughput."""
