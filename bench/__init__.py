"""Benchmark tools beside the package, not installed: measured runs (measure.py: `sdv2 bench model|pipeline|
parallel`), the analytic FLOP count (flops.py) and the hardware cost model (roofline.py: `sdv2 bench roofline`).
`sdv2 bench` loads them from the source checkout it runs from (engine/cli.py `load_bench`); results go to
bench/results/. From the checkout root also: `python -m bench.roofline [--out PATH] [--eta-...]`.
"""
