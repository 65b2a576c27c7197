"""Benchmarks subsystem: answer extraction, answer grading, benchmark settings."""
