"""Agent: ranked datasets and models, and a pipeline spec core validates, for a plain-language goal.

See docs/architecture.md.
"""
