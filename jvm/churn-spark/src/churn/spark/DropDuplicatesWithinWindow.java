package churn.spark;

import java.sql.Timestamp;
import java.time.Instant;

import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.streaming.ExpiredTimerInfo;
import org.apache.spark.sql.streaming.OutputMode;
import org.apache.spark.sql.streaming.StatefulProcessor;
import org.apache.spark.sql.streaming.TimeMode;
import org.apache.spark.sql.streaming.TimerValues;
import org.apache.spark.util.LongAccumulator;

import scala.collection.Iterator;
import scala.collection.Iterator$;

/**
 * Streaming de-duplication whose cost per micro-batch follows the batch, not the state.
 *
 * <p>The window is the watermark's delay on the time column: a row is dropped if a row with its key was
 * kept less than the window before the newest time of the batches before it, and kept otherwise. A kept
 * key is remembered by nothing but an event-time timer at its own time: a key whose timer the watermark
 * (that newest time minus the window) has not passed is a duplicate; once it has, the key is forgotten
 * and Spark removes the timer. Spark keeps timers in an index ordered by time, so a batch reads the keys
 * it brings and the timers that expire, nothing else. Spark's own {@code dropDuplicatesWithinWatermark}
 * iterates over its whole state on every batch to find expired keys, so its cost per batch grows with
 * the window times the rate.
 *
 * <p>{@link #applyInProcessingTime} does the same by the batches' own time (Spark's processing time, the
 * batch's timestamp in the offset log, so a replayed batch decides the same): a kept key's timer is set to
 * the batch's time plus the window, and the key is a duplicate while a batch's time has not reached it.
 * It needs no time column and no watermark, so the query's plan holds no value that changes from batch to
 * batch, and Spark compiles its generated code once instead of once per batch.
 *
 * <p>Called from Python through {@link #apply(Dataset, String, String, String, LongAccumulator)} or
 * {@link #applyInProcessingTime(Dataset, String, long, String, LongAccumulator)}, which also
 * count the duplicates. With a flag column, duplicates are kept with the flag set to true instead of being
 * dropped (the streaming job writes every record to Bronze from the same batch). Needs the RocksDB state store. Rows older than the watermark are dropped by Spark as
 * late: with the batch's own time as the time column ({@code current_timestamp()}), only if the clock
 * went back by more than the window.
 */
public final class DropDuplicatesWithinWindow extends StatefulProcessor<String, Row, Row> {
    private static final long serialVersionUID = 1L;

    private final int timeColumn;  // -1: processing time
    private final long windowMs;  // with processing time: how long a kept key is remembered
    private final int flagColumn;  // -1: duplicates are dropped
    private final LongAccumulator dropped;

    private DropDuplicatesWithinWindow(int timeColumn, long windowMs, int flagColumn, LongAccumulator dropped) {
        this.timeColumn = timeColumn;
        this.windowMs = windowMs;
        this.flagColumn = flagColumn;
        this.dropped = dropped;
    }

    /**
     * {@code rows} (with a watermark on {@code timeColumn}, its delay the window) less those whose
     * {@code keyColumn} came within the window before; {@code dropped} counts them. With {@code flagColumn}
     * (a boolean column of {@code rows}, else null), those rows are kept with it set to true instead.
     */
    public static Dataset<Row> apply(Dataset<Row> rows, String keyColumn, String timeColumn, String flagColumn,
                                     LongAccumulator dropped) {
        int time = rows.schema().fieldIndex(timeColumn);
        int flag = flagColumn == null ? -1 : rows.schema().fieldIndex(flagColumn);
        return rows
            .groupBy(rows.col(keyColumn)).as(Encoders.STRING(), Encoders.row(rows.schema()))
            .transformWithState(new DropDuplicatesWithinWindow(time, 0L, flag, dropped), TimeMode.EventTime(),
                                OutputMode.Append(), Encoders.row(rows.schema()));
    }

    /**
     * {@code rows} (no watermark) less those whose {@code keyColumn} came within {@code windowMs} of the
     * batches' processing time before; {@code dropped} counts them. {@code flagColumn} as in {@link #apply}.
     */
    public static Dataset<Row> applyInProcessingTime(Dataset<Row> rows, String keyColumn, long windowMs,
                                                     String flagColumn, LongAccumulator dropped) {
        int flag = flagColumn == null ? -1 : rows.schema().fieldIndex(flagColumn);
        return rows
            .groupBy(rows.col(keyColumn)).as(Encoders.STRING(), Encoders.row(rows.schema()))
            .transformWithState(new DropDuplicatesWithinWindow(-1, windowMs, flag, dropped),
                                TimeMode.ProcessingTime(), OutputMode.Append(), Encoders.row(rows.schema()));
    }

    @Override
    public void init(OutputMode outputMode, TimeMode timeMode) {
        // no state variable: a key's pending timer is its memory
    }

    @Override
    public Iterator<Row> handleInputRows(String key, Iterator<Row> rows, TimerValues timerValues) {
        boolean processingTime = timeColumn < 0;
        long now = processingTime ? timerValues.getCurrentProcessingTimeInMs() : timerValues.getCurrentWatermarkInMs();
        Iterator<Object> timers = getHandle().listTimers();  // one at most
        if (timers.hasNext()) {
            long expires = (Long) timers.next();
            if (expires > now) {
                return duplicates(rows);
            }
            getHandle().deleteTimer(expires);  // expired, but Spark fires timers after a batch's rows: forget it now
        }
        Row first = rows.next();
        getHandle().registerTimer(processingTime ? now + windowMs : millis(first.get(timeColumn)));
        return Iterator$.MODULE$.single(first).concat(() -> duplicates(rows));
    }

    /** The rest of {@code rows}, all duplicates: counted, then dropped or flagged. */
    private Iterator<Row> duplicates(Iterator<Row> rows) {
        if (flagColumn < 0) {
            dropped.add(rows.size());
            return Iterator$.MODULE$.empty();
        }
        return rows.map(row -> {
            dropped.add(1);
            return flagged(row, flagColumn);
        });
    }

    /** {@code row} with its boolean column {@code flagColumn} set to true: a duplicate kept for Bronze. */
    static Row flagged(Row row, int flagColumn) {
        Object[] values = new Object[row.length()];
        for (int i = 0; i < values.length; i++) {
            values[i] = i == flagColumn ? Boolean.TRUE : row.get(i);
        }
        return RowFactory.create(values);
    }

    @Override
    public Iterator<Row> handleExpiredTimer(String key, TimerValues timerValues, ExpiredTimerInfo expiredTimerInfo) {
        return Iterator$.MODULE$.empty();
    }

    private static long millis(Object time) {
        return time instanceof Instant ? ((Instant) time).toEpochMilli() : ((Timestamp) time).getTime();
    }
}
