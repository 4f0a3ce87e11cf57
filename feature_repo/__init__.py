"""The Feast feature repository: one module per entity or view, paths and stores from the settings.

``churn features apply`` registers these definitions (and writes ``feature_store.yaml``
here for the ``feast`` CLI); ``churn.feature_store`` builds the store from the settings.
"""
