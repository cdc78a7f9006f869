"""Generation team: site-local LLM operators that add missing content (answers, questions, new pairs).

Importing this package registers its operators.
"""

from site_agent.operators.generation.fill_answer import FillAnswer
from site_agent.operators.generation.fill_question import FillQuestion
from site_agent.operators.generation.synthesize_pairs import SynthesizePairs

__all__ = ["FillAnswer", "FillQuestion", "SynthesizePairs"]
