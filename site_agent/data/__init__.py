"""Site data: loading and saving instruction/answer pairs, and a labelled toy set for demos and tests."""

from site_agent.data.loading import SUPPORTED_SUFFIXES, load_pairs, save_pairs
from site_agent.data.toy import NOISE_TYPES, TOY_MAX_ROWS, make_toy_dataset

__all__ = ["NOISE_TYPES", "SUPPORTED_SUFFIXES", "TOY_MAX_ROWS", "load_pairs", "make_toy_dataset", "save_pairs"]
