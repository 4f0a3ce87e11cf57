"""How the scorer runs Faust's worker: without the terminal spinner that sets the root logger to DEBUG."""

from __future__ import annotations

import logging

import faust
import pytest

from streaming.scoring.app import faust_worker


@pytest.fixture
def root_logger():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.WARNING)
    root.addHandler(logging.NullHandler())  # Faust's spinner set-up adjusts the first handler
    yield root
    root.setLevel(level)
    root.handlers[:] = handlers


def _app() -> faust.App:
    return faust.App("spinner-test", broker="kafka://127.0.0.1:1", web_enabled=False, store="memory://")


def test_faust_own_worker_turns_debug_on_for_its_spinner(root_logger):
    """The behaviour the scorer avoids: if Faust stops doing this, ``faust_worker`` has nothing left to do."""
    faust.Worker(_app(), loglevel="warning", quiet=True).on_setup_root_logger(root_logger, logging.WARNING)
    assert root_logger.level == logging.DEBUG
    assert logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)


def test_the_scorers_worker_keeps_the_log_level_it_was_given(root_logger):
    worker = faust_worker(_app(), "warning")
    worker.on_setup_root_logger(root_logger, logging.WARNING)
    assert worker.spinner is None
    assert root_logger.level == logging.WARNING
    assert not logging.getLogger("aiokafka.consumer.fetcher").isEnabledFor(logging.DEBUG)
