"""The MathCoder runtime: the interleaved generate-execute loop, its trace format and its CLI."""
