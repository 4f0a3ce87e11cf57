"""The Faust app that scores every CDR: agents, rebalance hooks and exactly-once output wired together.

* agent ``score`` takes CDRs from ``cdr`` in batches (``take_events``) and
  hands them to task ``score_taken``, which scores the batches waiting as one
  (``BatchScorer``: one online-store lookup, the CDRs the store does not cover
  yet added from the overlay, one model call) and writes every score
  to ``churn-scores`` and every alert to ``churn-alerts`` inside the
  worker's open transaction (``WorkerTransactions``), committed with the CDRs'
  offsets every ``scoring.commit_interval_s``;
* timer ``rescore_quiet`` scores customers without a CDR for
  ``scoring.rescore_after_s`` at the current time, into the same transactions;
* timer ``release_covered`` drops the overlay's CDRs once the streaming job's
  pushed state covers them (the offsets it records in Redis);
* agent ``learn`` takes churn labels, scores the labelled customer with the
  champion and the online challenger (predict, then learn) and exports each
  model's rolling ROC AUC;
* rebalance hooks hand partitions to and from ``WorkerTransactions``.

Why not Faust's own ``processing_guarantee="exactly_once"``: it commits the
offsets of input partition *p* in the transaction named after *p*, but sends
each output through the transaction named after the *output* partition, so
outputs to topics partitioned differently from the input are not in the same
transaction as the offsets; and with a table changelog written per event it
ran at about 2,000 events/s here. So this app runs Faust as at-least-once for
consumption and group membership, turns Faust's own offset commits off, and
commits offsets itself, inside the transactions that carry the outputs.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import faust
import redis
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults

from churn.config import Settings
from churn.contracts import CHURN_LABEL, parse_time
from churn.feature_store import covered_offsets_key
from churn.model.inputs import matrix
from churn.model.online import OnlineChallenger, ProgressiveEvaluator
from churn.model.registry import SYNTHETIC, ChampionWatcher, ModelRegistry
from churn.online_reader import fail_fast_redis
from churn.security import faust_credentials, redis_options
from streaming.scoring import metrics
from streaming.scoring.eager import run_eagerly
from streaming.scoring.fetch import fetch_adaptively
from streaming.scoring.liveness import Liveness, die
from streaming.scoring.lookup import online_features
from streaming.scoring.scorer import BatchScorer, Incoming
from streaming.scoring.transactions import (CALL_TIMEOUT_S, COMMIT_DEADLINE_S, TransactionsLost, WorkerTransactions,
                                            group_metadata)

log = logging.getLogger(__name__)

#: CDRs taken from Faust and waiting to be scored, at most, in ``batch_max``: past it Faust's agent waits.
TAKEN_BATCHES_FACTOR = 2


class TakenBatches:
    """The CDR batches Faust's agent has taken and the scoring task has not scored yet, at most ``limit``
    CDRs (``put`` waits for room: Faust's fetching is held back while scoring is behind).

    >>> async def demo():
    ...     taken = TakenBatches(limit=5)
    ...     await taken.put([1, 2]); await taken.put([3]); await taken.put([4, 5, 6])
    ...     await taken.wait()
    ...     return taken.take(most=3), taken.take(most=3), taken.waiting
    >>> asyncio.run(demo())
    ([1, 2, 3], [4, 5, 6], 0)
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.waiting = 0  # CDRs
        self._batches: deque[list] = deque()
        self._some = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    async def put(self, batch: list) -> None:
        while self.waiting >= self.limit:
            self._room.clear()
            await self._room.wait()
        self._batches.append(batch)
        self.waiting += len(batch)
        self._some.set()

    async def wait(self) -> None:
        """Until at least one batch is waiting."""
        while not self._batches:
            self._some.clear()
            await self._some.wait()

    def take(self, most: int) -> list:
        """The batches waiting, oldest first, joined into one until it holds ``most`` CDRs or more."""
        out: list = []
        while self._batches and len(out) < most:
            out += self._batches.popleft()
        self.waiting -= len(out)
        self._room.set()
        return out


async def _offsets_are_committed_in_our_transactions(self, offsets) -> bool:
    return True


def disable_faust_offset_commits() -> None:
    """Faust must not commit offsets: ours are committed in the output transactions (see module doc)."""
    faust_aiokafka.Consumer._commit = _offsets_are_committed_in_our_transactions


def deliver_records_eagerly() -> None:
    """Faust's consumer hands each record to its topic's handler through ``Service.wait_first(handler(record),
    suspend_flow.wait())``: four tasks and an ``asyncio.wait`` per record, although the handler nearly always
    finishes without waiting. The handler is started eagerly (``streaming.scoring.eager``); only one that
    waits (flow suspended for a rebalance, a full stream buffer) goes through ``wait_first`` as before."""
    consumer = faust_aiokafka.Consumer
    if getattr(consumer.wait_first, "eager", False):
        return
    service_wait_first = consumer.wait_first

    async def wait_first(self, *coros, timeout=None):
        if coros and asyncio.iscoroutine(coros[0]):
            done, rest = run_eagerly(coros[0])
            if done:
                for other in coros[1:]:  # never started: closed, so none warns that it was never awaited
                    if asyncio.iscoroutine(other):
                        other.close()
                return WaitResults([coros[0]], [rest], False)
            coros = (rest, *coros[1:])
        return await service_wait_first(self, *coros, timeout=timeout)

    wait_first.eager = True
    consumer.wait_first = wait_first


def faust_app(settings: Settings, eager: bool = True) -> faust.App:
    """The worker's Faust app, before its agents: group membership and consumption only, with Faust's own
    offset commits turned off (see the module doc), records delivered eagerly (``eager``: see
    ``deliver_records_eagerly``) and fetches in batches while records flow (``streaming.scoring.fetch``).
    ``bench/faust_alone.py`` measures it bare, with and without eager delivery."""
    s, cfg = settings, settings.scoring
    disable_faust_offset_commits()
    if eager:
        deliver_records_eagerly()
    fetch_adaptively(cfg.fetch_min_bytes, cfg.fetch_max_wait_ms, cfg.fetch_idle_max_wait_ms)
    datadir = s.run_dir / "faust" / cfg.app_id  # not the working directory
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return faust.App(
        cfg.app_id,
        broker=[f"kafka://{server}" for server in s.kafka.bootstrap_servers.split(",")],
        broker_credentials=faust_credentials(s, "scorer"),
        processing_guarantee="at_least_once",
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        topic_replication_factor=s.topics.replication_factor,
        topic_allow_declare=False,
        broker_session_timeout=cfg.session_timeout_s,
        broker_heartbeat_interval=min(3.0, cfg.session_timeout_s / 4),
        broker_commit_interval=1.0,
        # Faust's livelock check ("Has not committed TP ... at all since worker start", an ERROR every few
        # minutes per partition) counts only Faust's own commits, which are off: offsets are committed in the
        # output transactions. ``streaming.scoring.liveness`` is the check that is true for this worker.
        broker_commit_livelock_soft_timeout=365 * 86400.0,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=max(4 * cfg.batch_max, 4096),
        # aiokafka keeps what it prefetched (up to 1 MiB per partition) as compressed batches, but a poll without
        # a limit unpacks all of it into records at once: behind by much, that was ~200 MB of records waiting
        broker_max_poll_records=cfg.batch_max,
        table_standby_replicas=0,
        producer_acks=-1,
    )


def faust_worker(app: faust.App, loglevel: str) -> faust.Worker:
    """A Faust worker for ``app`` without Faust's terminal spinner. With a spinner, Faust sets the root logger
    to DEBUG (every log call turns it), so each debug call of aiokafka, Faust and mode built a log record
    that no handler printed: ~5 % of a live Faust worker's samples."""
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.spinner = None
    return worker


def run_faust_worker(app: faust.App, loglevel: str) -> None:
    """Run ``app`` in a Faust worker (``faust_worker``) until it is stopped."""
    faust_worker(app, loglevel).execute_from_commandline()


def ensure_leader_topic(settings: Settings) -> None:
    """Create Faust's leader-election topic (``<app id>-__assignor-__leader``, one partition) if missing. The
    app may not declare topics (``topic_allow_declare=False``: ours are created from the settings), so
    without it every start logged "Topic ... not found in cluster metadata" as an ERROR."""
    from confluent_kafka.admin import NewTopic

    from churn.transport import admin

    name = f"{settings.scoring.app_id}-__assignor-__leader"
    client = admin(settings, role="scorer")
    if name in client.list_topics(timeout=30).topics:
        return
    for fut in client.create_topics([NewTopic(name, 1, settings.topics.replication_factor)]).values():
        try:
            fut.result(30)
        except Exception as exc:  # created meanwhile by another worker of the group
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def raw_topic(app: faust.App, name: str):
    """A topic whose keys and values reach the agent as the bytes on the wire (we parse them ourselves)."""
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


class ScoringWorker:
    def __init__(self, settings: Settings, feature_store=None):
        from churn import feature_store as fs_module

        self.settings = settings
        cfg = settings.scoring
        registry = ModelRegistry(cfg.registry_dir)
        if registry.champion_version() is None:
            raise RuntimeError(f"no champion model in {cfg.registry_dir}: run `churn model bootstrap` first")
        self.models = ChampionWatcher(registry, interval_s=cfg.model_check_interval_s)
        self._model_version: str | None = None
        self._champion_in_use()
        if feature_store is None:  # in a child process: Feast (~170 MB resident) stays out of the worker
            fs_module.ensure_applied_in_subprocess(settings)
        self.features = online_features(settings, feature_store)
        self.challenger = OnlineChallenger()
        self.evaluators = {"champion": ProgressiveEvaluator(), "challenger": ProgressiveEvaluator()}
        self.scorer = BatchScorer(settings, self.models, self.features, self.challenger)
        self._redis = fail_fast_redis(redis_options(settings, "scorer"))
        self._covered_key = covered_offsets_key(settings)
        self.txn: WorkerTransactions | None = None
        self.state: dict = {}
        # Set once this worker's partitions are taken over (producers fenced, state restored), cleared
        # when a rebalance starts; Faust resumes fetching before its assignment signal returns, so
        # batches wait for this instead.
        self._owned_ready: asyncio.Event | None = None
        self._taken: TakenBatches | None = None
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._broker_ends: dict[int, int] = {}  # cdr partition -> end offset, asked every 5 s (report_lag)
        self._commit_task: asyncio.Future | None = None
        # a commit retries for COMMIT_DEADLINE_S, its last call may then take CALL_TIMEOUT_S: past both, it hangs
        self.liveness = Liveness(cfg.stall_after_s, cfg.stall_exit_s,
                                 commit_deadline_s=COMMIT_DEADLINE_S + 2 * CALL_TIMEOUT_S + 10.0)
        ensure_leader_topic(settings)
        self.app = self._build_app()

    def _build_app(self) -> faust.App:
        s, cfg = self.settings, self.settings.scoring
        app = faust_app(s)
        cdr = raw_topic(app, s.topics.cdr.name)
        labels = raw_topic(app, s.topics.churn_labels.name)

        @app.agent(cdr, name="score")
        async def score(stream):
            # Faust fills its take buffer only while this body is not running: the body hands the batch over
            # and returns, so fetching goes on while the batches taken wait (``score_taken``)
            async for events in stream.take_events(cfg.batch_max, within=cfg.batch_within_s):
                await self.taken().put(events)

        @app.task
        async def score_taken():
            """Score the batches taken, all those waiting as one (up to ``batch_max`` CDRs). The commit in
            flight is a batch's window: Faust fills it meanwhile, and one batch of many CDRs costs far less
            than many small ones (a lookup round trip and a model call each). A full batch does not wait:
            its CDRs and outputs go into the next transaction (``WorkerTransactions.take_due``)."""
            taken = self.taken()
            while True:
                await taken.wait()
                await self._taken_over()
                if self._commit_task is not None and taken.waiting < cfg.batch_max:
                    waited = time.perf_counter()
                    await self._commit_done()
                    metrics.COMMIT_WAIT.observe(time.perf_counter() - waited)
                    await self._taken_over()
                self._guarded("score", self.score_batch, taken.take(cfg.batch_max))
                if self.ready().is_set():
                    self._start_commit()  # at once if the transaction is due, not at the timer's next tick

        @app.agent(labels, name="learn")
        async def learn(stream):
            async for events in stream.take_events(200, within=0.5):
                self._guarded("learn", self.learn_labels, events)

        @app.timer(interval=max(cfg.commit_interval_s / 2, 0.02))
        async def commit_due():
            if self.txn is not None and self.ready().is_set():  # never while partitions change hands
                self._start_commit()

        @app.timer(interval=5.0)
        async def ask_end_offsets():
            """The broker's end offsets, for the lag: Faust's consumer knows its partitions' ends only from its own
            fetches, so a consumer that had stopped fetching would report no lag, and no stall, for good."""
            txn = self.txn
            if txn is None:
                return
            try:
                self._broker_ends = await asyncio.get_running_loop().run_in_executor(None, txn.end_offsets)
            except Exception as exc:  # the broker unreachable: the consumer's view stands meanwhile
                log.debug("could not ask the broker's end offsets: %s", exc)

        @app.timer(interval=1.0)
        async def report_lag():
            waiting = 0
            if self.txn is not None:
                for p, nxt in list(self.txn.next_offset.items()):
                    # the broker's end less one: a transactional producer's last commit marker is never consumed
                    hw = max(app.consumer.highwater(faust.types.TP(s.topics.cdr.name, p)) or 0,
                             self._broker_ends.get(p, 0) - 1)
                    if nxt is not None and nxt >= 0:
                        metrics.LAG.labels(str(p)).set(max(hw - nxt, 0))
                        waiting += max(hw - nxt, 0)
            self.liveness.waiting(waiting)
            self.liveness.arm_frozen_process_exit()

        @app.timer(interval=cfg.rescore_check_s)
        async def rescore_quiet():
            if self.txn is not None and self.ready().is_set():
                self._guarded("rescore", self.rescore_due)

        @app.timer(interval=1.0)
        async def release_covered():
            self._guarded("overlay", self.release_covered)

        @app.timer(interval=5.0)
        async def report_drift():
            self._guarded("drift", self._report_drift)

        @app.on_partitions_revoked.connect
        async def on_revoked(sender, revoked, **kwargs):
            self.ready().clear()  # a rebalance starts: hold batches until the new assignment is taken over
            await self._commit_done()
            mine = {tp.partition for tp in revoked if tp.topic == s.topics.cdr.name}
            if self.txn is not None and mine:
                await self._within(asyncio.get_running_loop().run_in_executor(None, self.txn.revoke, mine),
                                   "giving partitions up")
                for p in mine:
                    self.state.pop(p, None)
                    self.scorer.overlay.forget(p)
                    _forget_partition(p)
            metrics.PARTITIONS.set(len(self.txn.owned) if self.txn else 0)

        @app.on_partitions_assigned.connect
        async def on_assigned(sender, assigned, **kwargs):
            self.ready().clear()  # no batch and no commit starts until the assignment is taken over
            loop = asyncio.get_running_loop()
            if self.txn is None:
                self.txn = await loop.run_in_executor(None, WorkerTransactions, s, self._membership)
            mine = {tp.partition for tp in assigned if tp.topic == s.topics.cdr.name}
            await self._commit_done()
            gone = self.txn.owned - mine
            if gone:
                await self._within(loop.run_in_executor(None, self.txn.revoke, gone), "giving partitions up")
                for p in gone:
                    self.state.pop(p, None)
                    self.scorer.overlay.forget(p)
                    _forget_partition(p)
            restored = await self._within(loop.run_in_executor(None, self.txn.assign, mine), "taking partitions over")
            self.state.update(restored)
            await self._within(loop.run_in_executor(None, self.reload_overlay, set(restored)),
                               "reloading the overlay")
            if self.txn is None:  # stopping meanwhile
                return
            metrics.PARTITIONS.set(len(self.txn.owned))
            self.ready().set()

        @app.on_before_shutdown.connect
        async def on_shutdown(sender, **kwargs):
            import threading  # a graceful stop must end too: commits have deadlines, this bounds the rest

            watchdog = threading.Timer(COMMIT_DEADLINE_S + 30.0, die, ("graceful stop did not finish",))
            watchdog.daemon = True
            watchdog.start()
            self.ready().clear()
            await self._commit_done()
            txn, self.txn = self.txn, None  # agents still running skip their batch: it was never committed
            if txn is not None:
                txn.close()

        return app

    def _membership(self) -> bytes:
        """This worker's membership of the consumer group, as the transaction's offsets carry it: the broker
        refuses them if the group has moved on to a newer generation (this worker was replaced)."""
        coordinator = self.app.consumer._thread._ensure_consumer()._coordinator
        if coordinator.generation < 0 or not coordinator.member_id:
            raise TransactionsLost("not a member of the consumer group: offsets cannot be committed")
        return group_metadata(self.settings.scoring.app_id, coordinator.generation, coordinator.member_id)

    async def _within(self, awaitable, what: str):
        """Await ``awaitable`` for at most ``takeover_deadline_s``; past it, or if it fails, the worker exits
        (``die``). A hand-over that failed must not be survived: e.g. a worker the group has already
        replaced cannot commit (``TransactionsLost``), and its open transaction, still holding the
        outputs of partitions now owned by another worker, must never be committed later under a new
        generation. Its restart aborts it."""
        try:
            return await asyncio.wait_for(awaitable, self.settings.scoring.takeover_deadline_s)
        except asyncio.TimeoutError:
            die("%s took more than %.0f s", what, self.settings.scoring.takeover_deadline_s)
        except Exception as exc:
            metrics.AGENT_ERRORS.labels("rebalance").inc()
            log.exception("%s failed", what)
            die("%s failed: %s", what, exc)

    async def _taken_over(self) -> None:
        while not self.ready().is_set():  # checked again on waking: another rebalance may have begun since
            await self._within(self.ready().wait(), "taking partitions over after a rebalance")

    def taken(self) -> TakenBatches:
        """Batches taken from ``cdr`` and not scored yet (created lazily, inside the worker's event loop)."""
        if self._taken is None:
            self._taken = TakenBatches(TAKEN_BATCHES_FACTOR * self.settings.scoring.batch_max)
        return self._taken

    def ready(self) -> asyncio.Event:
        if self._owned_ready is None:  # created lazily, inside the worker's event loop
            self._owned_ready = asyncio.Event()
        return self._owned_ready

    # -- the work --------------------------------------------------------------------------
    def _guarded(self, agent: str, fn, *args) -> None:
        """Run ``fn``; an exception is logged and counted, then stops the worker loudly (it is restarted
        and resumes from the last committed transaction: nothing lost, nothing repeated)."""
        try:
            fn(*args)
        except Exception as exc:
            metrics.AGENT_ERRORS.labels(agent).inc()
            log.exception("agent %s failed", agent)
            die("agent %s failed: %s", agent, exc)

    def score_batch(self, events) -> None:
        t0 = time.perf_counter()
        txn = self.txn
        incoming = []
        for ev in events:
            msg = ev.message
            if txn is None or not txn.owns(msg.partition):
                continue
            if not txn.accept(msg.partition, msg.offset):
                metrics.SKIPPED.inc()
                continue
            incoming.append(Incoming(msg.partition, msg.offset, msg.timestamp, msg.key, msg.value))
        if not incoming:
            return
        result = self.scorer.score(incoming, self.state)
        self._emit(txn, result)
        for reason, n in result.invalid.items():
            metrics.INVALID.labels(reason).inc(n)
        n = len(result.scored)
        metrics.EVENTS.inc(n)
        self.liveness.progressed()
        self._champion_in_use()
        if n:
            metrics.LOOKUP.observe(result.lookup_s)
            metrics.MODEL.observe(result.model_s)
        metrics.BATCH_SIZE.observe(len(incoming))
        metrics.BATCH.observe(time.perf_counter() - t0)

    def _emit(self, txn: WorkerTransactions, result) -> None:
        """A batch's scores and alerts into their partitions' transactions, and their metrics."""
        scores_topic, alerts_topic = self.settings.topics.churn_scores.name, self.settings.topics.churn_alerts.name
        for out in result.scored:
            key = out.customer_id.encode()
            txn.produce(out.partition, scores_topic, key, out.score, to_partition=out.partition)
            if out.latency_s is not None:
                metrics.E2E.observe(out.latency_s)
            inp = out.inputs
            metrics.OVERLAY_ADDED.observe(inp.added)
            if inp.not_included:  # None (unknown) is counted as an inexact decision only
                metrics.NOT_INCLUDED.inc(inp.not_included)
            if inp.basis != "exact":
                metrics.INEXACT.labels(inp.basis).inc()
            if result.degraded or inp.basis != "exact":
                metrics.DEGRADED.inc()
            if out.alert is not None:
                txn.produce(out.partition, alerts_topic, key, out.alert)
                metrics.ALERTS.labels(out.band).inc()
                if out.latency_s is not None:
                    metrics.ALERT_E2E.observe(out.latency_s)
        metrics.STORE_UP.set(0 if result.degraded else 1)
        metrics.OVERLAY_EVENTS.set(self.scorer.overlay.size)

    def rescore_due(self) -> None:
        """Score the owned partitions' customers who have had no decision for ``rescore_after_s``, oldest
        first (each partition's states are kept in order of their last decision)."""
        txn, cfg = self.txn, self.settings.scoring
        due_before = time.time() - cfg.rescore_after_s
        due: list[tuple[int, str]] = []
        for p, states in self.state.items():
            if not txn.owns(p) or txn.next_offset.get(p, -1) < 0:
                continue  # offsets to commit with the output are not known yet
            for customer, st in states.items():
                if st.decided_at is None or st.decided_at > due_before or len(due) >= cfg.rescore_max_per_check:
                    break
                due.append((p, customer))
        if not due:
            return
        result = self.scorer.rescore(due, self.state)
        self._emit(txn, result)
        metrics.RESCORED.inc(len(result.scored))
        self._champion_in_use()

    def _champion_in_use(self) -> None:
        """Export the champion the worker scores with (``churn_score_model_info{version}``) and whether it
        was trained on synthetic data (``churn_score_champion_synthetic``): at start and after a hot reload."""
        model = self.models.model
        version = model.meta["version"]
        if version == self._model_version:
            return
        if self._model_version is not None:
            metrics.MODEL_INFO.remove(self._model_version)
        metrics.MODEL_INFO.labels(version).set(1)
        synthetic = model.meta.get("training_source") == SYNTHETIC
        metrics.CHAMPION_SYNTHETIC.set(1 if synthetic else 0)
        self._model_version = version
        log.info("scoring with champion %s (trained on %s)", version,
                 "synthetic data" if synthetic else "real churn labels")

    def _covered(self) -> dict[int, int] | None:
        """The offsets the streaming job's pushed states cover (its Redis hash), or None if unreadable."""
        try:
            return {int(p): int(o) for p, o in self._redis.hgetall(self._covered_key).items()}
        except redis.RedisError as exc:
            log.warning("could not read the streaming job's covered offsets: %s", exc)
            return None

    def reload_overlay(self, partitions: set[int]) -> None:
        """Partitions just taken over: their CDRs that this worker's group has scored but the stream's pushed
        state does not cover yet, back into the overlay (a new worker would otherwise decide without them).
        At most the overlay's share of its cap per partition; below that, decisions are marked (``mark_gap``)."""
        txn = self.txn  # the worker may be stopping meanwhile (``on_shutdown`` drops it)
        if not self.settings.scoring.overlay or not partitions or txn is None:
            return
        covered = self._covered() or {}
        limit = max(self.settings.scoring.overlay_max_events // max(len(txn.owned), 1), 1)
        for p in sorted(partitions):
            if self.txn is None:
                return
            end = txn.next_offset.get(p, -1)
            if end is None or end <= 0:
                continue  # nothing scored yet: every CDR passes through the overlay when it is scored
            start = covered.get(p, 0)
            first = max(start, end - limit)
            if first > start:
                self.scorer.overlay.mark_gap(p, first)
            n = sum(self.scorer.admit([Incoming(p, o, t, k, v) for o, t, k, v in rows])
                    for rows in txn.read_cdrs(p, first, end))
            if n:
                log.info("cdr[%d]: %d CDRs at offsets %d..%d reloaded into the overlay", p, n, first, end - 1)

    def release_covered(self) -> None:
        """Drop the overlay's CDRs that the streaming job's pushed states cover and this worker has scored."""
        covered = self._covered()
        if covered is None:  # the overlay keeps its CDRs a while longer (up to its cap)
            return
        txn = self.txn
        if txn is not None:
            upto = {p: min(covered[p], nxt) for p, nxt in list(txn.next_offset.items())
                    if p in covered and nxt is not None and nxt >= 0}
            self.scorer.overlay.evict(upto)
        overlay = self.scorer.overlay
        metrics.OVERLAY_EVENTS.set(overlay.size)
        metrics.OVERLAY_DROPPED.set(overlay.dropped_total)

    def _report_drift(self) -> None:
        drift = self.scorer.drift
        if drift is None:
            return
        metrics.DRIFT_CUSTOMERS.set(drift.observed)
        if drift.observed >= self.settings.scoring.drift_min_customers:
            for feature, value in drift.psi().items():
                metrics.DRIFT_PSI.labels(feature).set(value)

    def _start_commit(self) -> None:
        """Close the open transaction if it is due, here on the event loop, and commit it on the commit
        thread: scoring and fetching go on while the broker confirms (a commit blocked the loop for tens
        of milliseconds per interval, which showed in the latency tail). Nothing awaits it here: the timer
        that calls this would otherwise run as long as each commit, and mode logs every such tick as a
        warning ("Timer ... is overlapping"), several a second under load."""
        if self._commit_task is not None or self.txn is None:
            return
        offsets = self.txn.take_due()
        if offsets is None:
            return
        task = asyncio.get_running_loop().run_in_executor(self._committer, self._commit_due, self.txn, offsets)
        self._commit_task = task
        task.add_done_callback(self._commit_ended)

    def _commit_ended(self, task: asyncio.Future) -> None:
        if self._commit_task is task:
            self._commit_task = None
        if task.cancelled():  # only as the loop shuts down: not a failed commit
            return
        failure = task.exception()
        if failure is not None:
            metrics.AGENT_ERRORS.labels("commit").inc()
            log.error("committing failed", exc_info=failure)
            die("committing failed: %s", failure)

    async def _commit_done(self) -> None:
        """Wait for the commit in flight, if any (its errors are handled by ``_commit_ended``)."""
        if self._commit_task is not None:
            # librdkafka's send_offsets_to_transaction can block past its own timeout while the broker
            # restarts (confluentinc/librdkafka#5456): the wait is bounded here instead
            done, _ = await asyncio.wait([self._commit_task], timeout=COMMIT_DEADLINE_S + 5.0)
            if not done:
                die("a transaction commit has not returned for %.0f s", COMMIT_DEADLINE_S + 5.0)

    def _commit_due(self, txn: WorkerTransactions, offsets) -> None:
        started = time.perf_counter()
        self.liveness.commit_started()  # the watchdog ends a commit that never returns (see Liveness)
        try:
            txn.complete(offsets)
        finally:
            self.liveness.commit_ended()
        metrics.COMMIT.observe(time.perf_counter() - started)
        metrics.TRANSACTIONS.inc()
        self.liveness.progressed()

    def learn_labels(self, events) -> None:
        labels = []
        for ev in events:
            label, bad = CHURN_LABEL.parse(ev.message.value)
            if bad is None:
                labels.append(label)
        if not labels:
            return
        customers = list(dict.fromkeys(lab["customer_id"] for lab in labels))
        looked = self.features.fetch(customers)
        times = [parse_time(lab["label_time"]) for lab in labels]
        X = matrix([looked.profiles.get(lab["customer_id"]) for lab in labels],
                   [looked.states.get(lab["customer_id"]) for lab in labels], times)
        champion = self.models.current().predict(X)
        for x, lab, p in zip(X, labels, champion):
            churned = bool(lab["churned"])
            self.evaluators["champion"].update(churned, float(p))
            self.evaluators["challenger"].update(churned, self.challenger.predict(x))
            self.challenger.learn(x, churned)
            metrics.LABELS.labels(str(churned).lower()).inc()
        for name, ev in self.evaluators.items():
            auc = ev.auc()
            if auc is not None:
                metrics.ONLINE_AUC.labels(name).set(auc)


def _forget_partition(partition: int) -> None:
    try:
        metrics.LAG.remove(str(partition))
    except KeyError:
        pass


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (``M_ARENA_MAX``) before any thread starts. glibc gives threads that
    allocate their own arena; a worker runs dozens of threads (librdkafka's, one transactional producer
    per partition), each arena's freed memory stays resident. No-op where glibc is not the C library."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def run(settings: Settings, loglevel: str = "info", worker_class: type[ScoringWorker] = ScoringWorker) -> None:
    """Start the worker (blocks until SIGTERM/SIGINT, which stop it after committing its transactions).
    ``worker_class``: ``bench/echo_worker.py`` runs the same worker with its scoring taken out."""
    limit_malloc_arenas()
    logging.basicConfig(level=getattr(logging, loglevel.upper()), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from streaming.scoring.bands import BANDS

    metrics.initialise(BANDS[BANDS.index(settings.scoring.alert_min_band):])
    worker = worker_class(settings)
    worker.liveness.serve(settings.scoring.metrics_host, settings.scoring.metrics_port)
    worker.liveness.watch()
    # Everything loaded so far (xgboost, river, Faust: many thousands of objects) lives as long as the worker;
    # keeping it out of the garbage collector's scans made scoring ~25 % faster in-process.
    gc.collect()
    gc.freeze()
    # A batch allocates tens of thousands of short-lived objects; at Python's default (a young collection
    # every 700 allocations) the collector's passes cost ~30 % of a batch's feature lookup. Every
    # 10,000, a lookup of 1,000 customers took 29 µs per customer instead of 41-47 (profiled in-process).
    gc.set_threshold(10_000, 10, 10)
    metrics.time_gc_pauses()
    run_faust_worker(worker.app, loglevel)
