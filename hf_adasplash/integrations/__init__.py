"""Framework integrations; ``transformers``: ``attn_implementation="adasplash"`` (registered on import)."""
