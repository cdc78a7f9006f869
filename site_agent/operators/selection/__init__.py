"""Selection team: operators that only choose rows (keep flags), never rewrite them.

Importing this package registers its operators.
"""
