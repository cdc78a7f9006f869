"""Optimization team: site-local LLM operators that rewrite questions, answers or pairs.

Importing this package registers its operators.
"""

from site_agent.operators.optimization.rewrite_answer import RewriteAnswer
from site_agent.operators.optimization.rewrite_pair import RewritePair
from site_agent.operators.optimization.rewrite_question import RewriteQuestion

__all__ = ["RewriteAnswer", "RewritePair", "RewriteQuestion"]
