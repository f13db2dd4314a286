"""Benchmark programs: python -m benchmarks.inference"""
