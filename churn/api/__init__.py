"""The scoring API (``churn serve``) and its read model."""
