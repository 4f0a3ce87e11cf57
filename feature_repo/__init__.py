"""The Feast feature repository: one module per entity or view, paths and stores from the settings.

``churn features apply`` registers these definitions (and writes ``feature_store.yaml`` for
the ``feast`` CLI under the run directory, ``<run_dir>/feast``, never here); ``churn.feature_store``
builds the store from the settings. ``mappings/`` holds profile extract mappings (``churn profiles load``).
"""
