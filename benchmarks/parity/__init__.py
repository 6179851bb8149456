"""Parity with the reference codes: equal outputs, equal learning curves.

For each diffusion model (DiffuRec, DiffuRecSys, CDDRec, ADRec) two checks
against the authors' own code, read at run time from a local checkout given as
``--reference-dir`` (never copied into this project):

- equivalence: the same weights in both implementations, the same inputs and
  the same random draws; the largest absolute difference of their outputs;
- training: both trained on the reference's own data with the same budget,
  per-epoch validation NDCG@10 and final test metrics side by side.

Records go to ``benchmarks/results/raw/parity.jsonl``; ``render`` writes
``benchmarks/results/parity.md`` from them. Only the equivalence half exists
so far: ``python -m benchmarks.parity.equivalence --help`` and ``python -m
benchmarks.parity.render``.
"""
