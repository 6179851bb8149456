"""Head-to-head benchmark harness: ``run.py`` trains, ``render.py`` reports.

See ``benchmarks/README.md``.
"""
