"""The retention dashboard (``churn dashboard``)."""
