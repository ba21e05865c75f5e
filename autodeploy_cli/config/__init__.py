"""Config: schema, layered loading, and the built-in pipeline (default.yaml)."""
