"""Churn models: their inputs, the tree champion, the online challenger and the registry."""
