"""Agent: ranked datasets and models, and a pipeline spec core validates, for a plain-language goal (see docs/architecture.md)."""
