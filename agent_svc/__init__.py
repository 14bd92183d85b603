"""Agent: ranked datasets and models, and a pipeline spec core validates, for a plain-language goal (see ../shared/ARCHITECTURE.md)."""
