"""Helpers of detect_sharding and sharding_transform_executor (not transforms themselves)."""
