"""Selection team: operators that only choose rows (keep flags), never rewrite them.

Importing this package registers its operators.
"""

from site_agent.operators.selection.diversity_select import DiversitySelect
from site_agent.operators.selection.ifd_filter import IFDFilter
from site_agent.operators.selection.length_balanced_topk import LengthBalancedTopK
from site_agent.operators.selection.perplexity_filter import PerplexityFilter
from site_agent.operators.selection.screening_threshold import ScreeningThreshold

__all__ = ["DiversitySelect", "IFDFilter", "LengthBalancedTopK", "PerplexityFilter", "ScreeningThreshold"]
