"""Benchmarks: run by hand (`python -m titanic.bench.mdp`, `.tsp`, `.store`, ...), never timed
in tests. They may import every package of titanic but `titanic.ops`; nothing imports them but
the CLI's `titanic bench`.
"""
