"""Sandboxed, stateful execution of model-written code in Jupyter kernels."""
