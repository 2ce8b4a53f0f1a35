"""Reading a catalog back: the read model, one reader over either catalog, the governance
report and its renderers."""
