"""Optimization team: site-local LLM operators that rewrite questions, answers or pairs.

Importing this package registers its operators.
"""
