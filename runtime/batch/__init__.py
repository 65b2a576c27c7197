"""Running a batch of items into a resumable folder: the machinery the benchmark harness
(``benchmarks.run``, ``benchmarks.ray_run``) and data generation (``training.generate.runner``) share.

``folder``: the crash-safe run folder (``config.json`` + an append-only, fsynced JSONL of records).
``drive``: the two drivers over it, one process (``drive_local``) or sharded over Ray actors
(``drive_ray``), and the Ray plumbing (actors, placement, dispatch).
"""
