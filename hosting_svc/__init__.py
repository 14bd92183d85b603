"""Hosting: see ../shared/ARCHITECTURE.md. Its RPCs answer UNIMPLEMENTED until they land."""
