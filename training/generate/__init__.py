"""Data generation: seed problems in, validated code-interleaved training traces out.

One file per mode (``gsm8k_calc``, ``backward``, ``teacher``, ``rephrase``, ``concept_graph``);
``records`` holds the typed rows, ``context`` what a mode may use (sandbox, teacher, grader),
``runner`` the resumable async run, ``dataset`` the finished outputs (traces, SFT view, card).
"""
