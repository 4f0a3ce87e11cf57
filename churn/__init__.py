"""The churn-scoring system: contracts, features, stack, models and the ``churn`` CLI."""

import os as _os
import sys as _sys

# Importing Feast (its ``feast.metrics``) sets PROMETHEUS_MULTIPROC_DIR to a temporary folder of its own when
# it is not set, for its Gunicorn feature server. prometheus_client imported after that runs in its
# multiprocess mode: every metric update goes through a memory-mapped file in a folder Feast deletes at exit,
# and child processes (Spark's Python workers, the scorer's helpers) inherit the variable. Our processes keep
# in-process values: the variable is dropped when it is Feast's (inherited from a parent) and
# prometheus_client's value class is chosen here, before Feast can be imported.
for _name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir"):
    if "feast_metrics_" in _os.environ.get(_name, ""):
        del _os.environ[_name]
import prometheus_client.values  # noqa: E402,F401  (its ValueClass is decided on first import)


def _feast_classes_uninstrumented() -> None:
    """Feast decorates its classes with typeguard's ``@typechecked``, which recompiles every method of each one
    from its module's parsed source when Feast is imported: ~7 s of CPU in every process that imports Feast
    (``churn stream``, ``churn features apply``, the API, the nightly), 9.6 s where 2.8 s remain without it.
    typeguard documents the decorator as a development aid that is a no-op in optimized mode (``python -O``);
    it is made one here, before Feast can be imported. Feast's own validation of definitions (``apply``) stays."""
    try:
        import typeguard
    except ImportError:
        return

    def typechecked(target=None, **options):
        return (lambda decorated: decorated) if target is None else target

    typeguard.typechecked = typechecked


class _BeforeFeast:
    """An import hook that runs ``_feast_classes_uninstrumented`` as Feast starts being imported, then steps
    aside: processes that never import Feast (the scorer, Spark's Python workers, most CLI calls) do not
    import typeguard either (~120 ms, half of ``import churn``)."""

    def find_spec(self, name, path=None, target=None):
        if name == "feast":
            _sys.meta_path.remove(self)
            _feast_classes_uninstrumented()
        return None  # the regular finders import it


_sys.meta_path.insert(0, _BeforeFeast())
