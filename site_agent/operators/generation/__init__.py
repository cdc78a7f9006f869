"""Generation team: site-local LLM operators that add missing content (answers, questions, new pairs).

Importing this package registers its operators.
"""
