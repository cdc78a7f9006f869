"""Cleaning team: operators that repair or drop malformed rows (markup, encoding, length, duplicates).

Importing this package registers its operators.
"""

from site_agent.operators.cleaning.exact_dedup import ExactDedup
from site_agent.operators.cleaning.length_filter import LengthFilter
from site_agent.operators.cleaning.normalize_text import NormalizeText
from site_agent.operators.cleaning.remove_markup import RemoveMarkup

__all__ = ["ExactDedup", "LengthFilter", "NormalizeText", "RemoveMarkup"]
