"""Speed benchmarks: our training path against the same configuration written with lightly's blocks.

``ssl-zoo bench [key=value ...]`` (``ssl_zoo.bench.config.BenchConfig`` lists the keys) times end-to-end
training steps of SimCLR, BYOL, MoCo v2 (ResNet-18) and DINO (ViT-tiny) on both sides, alternating
them in one process, and prints Markdown tables: images/s, samples/s, data-wait fraction, peak memory
and the ratio ours/lightly. Options sweep the batch size, the image size, the number of views and the
kNN monitor's bank size. lightly is the optional ``bench`` extra.
"""

from ssl_zoo.bench.config import BenchConfig, parse_bench_args
from ssl_zoo.bench.runner import run_bench

__all__ = ["BenchConfig", "parse_bench_args", "run_bench"]
