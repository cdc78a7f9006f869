"""The medical QA benchmark: Chinese QA pairs from PyCMeKG, split non-IID over hospital sites, with
labelled realistic noise in each site's training set and a clean held-out evaluation set per site.

``build_benchmark(out_dir)`` writes it (``autodp data build-benchmark``); the modules are its steps:
``cmekg`` (safe loading), ``qa`` (phrasing), ``noise`` (damage with labels), ``split`` (sites), ``build``.
"""

from site_agent.data.benchmark.build import GENERATOR_VERSION, BenchmarkManifest, SiteManifest, build_benchmark
from site_agent.data.benchmark.cmekg import load_cmekg, restricted_loads
from site_agent.data.benchmark.noise import CLEAN, NOISE_TYPES, LabelledRow, inject_noise
from site_agent.data.benchmark.qa import QAPair, generate_qa_pairs

__all__ = [
    "CLEAN",
    "GENERATOR_VERSION",
    "NOISE_TYPES",
    "BenchmarkManifest",
    "LabelledRow",
    "QAPair",
    "SiteManifest",
    "build_benchmark",
    "generate_qa_pairs",
    "inject_noise",
    "load_cmekg",
    "restricted_loads",
]
