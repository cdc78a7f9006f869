"""Cleaning team: operators that repair or drop malformed rows (markup, encoding, length, duplicates,
identifiers, repetition loops, mismatched pairs).

Importing this package registers its operators.
"""

from site_agent.operators.cleaning.exact_dedup import ExactDedup
from site_agent.operators.cleaning.length_filter import LengthFilter
from site_agent.operators.cleaning.minhash_dedup import MinhashDedup
from site_agent.operators.cleaning.ngram_repetition_filter import NgramRepetitionFilter
from site_agent.operators.cleaning.normalize_text import NormalizeText
from site_agent.operators.cleaning.qa_mismatch_filter import QAMismatchFilter
from site_agent.operators.cleaning.redact_identifiers import RedactIdentifiers
from site_agent.operators.cleaning.remove_markup import RemoveMarkup
from site_agent.operators.cleaning.special_char_filter import SpecialCharFilter

__all__ = [
    "ExactDedup",
    "LengthFilter",
    "MinhashDedup",
    "NgramRepetitionFilter",
    "NormalizeText",
    "QAMismatchFilter",
    "RedactIdentifiers",
    "RemoveMarkup",
    "SpecialCharFilter",
]
