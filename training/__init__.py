"""Fine-tuning models on code-interleaved traces."""
