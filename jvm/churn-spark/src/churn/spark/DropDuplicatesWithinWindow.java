package churn.spark;

import java.sql.Timestamp;
import java.time.Instant;

import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
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
 * <p>Called from Python through {@link #apply(Dataset, String, String, LongAccumulator)}, which also counts
 * the rows dropped. Needs the RocksDB state store. Rows older than the watermark are dropped by Spark as
 * late: with the batch's own time as the time column ({@code current_timestamp()}), only if the clock
 * went back by more than the window.
 */
public final class DropDuplicatesWithinWindow extends StatefulProcessor<String, Row, Row> {
    private static final long serialVersionUID = 1L;

    private final int timeColumn;
    private final LongAccumulator dropped;

    private DropDuplicatesWithinWindow(int timeColumn, LongAccumulator dropped) {
        this.timeColumn = timeColumn;
        this.dropped = dropped;
    }

    /**
     * {@code rows} (with a watermark on {@code timeColumn}, its delay the window) less those whose
     * {@code keyColumn} came within the window before; {@code dropped} counts the rows left out.
     */
    public static Dataset<Row> apply(Dataset<Row> rows, String keyColumn, String timeColumn,
                                     LongAccumulator dropped) {
        int time = rows.schema().fieldIndex(timeColumn);
        return rows
            .groupBy(rows.col(keyColumn)).as(Encoders.STRING(), Encoders.row(rows.schema()))
            .transformWithState(new DropDuplicatesWithinWindow(time, dropped), TimeMode.EventTime(),
                                OutputMode.Append(), Encoders.row(rows.schema()));
    }

    @Override
    public void init(OutputMode outputMode, TimeMode timeMode) {
        // no state variable: a key's pending timer is its memory
    }

    @Override
    public Iterator<Row> handleInputRows(String key, Iterator<Row> rows, TimerValues timerValues) {
        Iterator<Object> timers = getHandle().listTimers();  // one at most
        if (timers.hasNext()) {
            long expires = (Long) timers.next();
            if (expires > timerValues.getCurrentWatermarkInMs()) {
                dropped.add(rows.size());
                return Iterator$.MODULE$.empty();
            }
            getHandle().deleteTimer(expires);  // expired, but Spark fires timers after a batch's rows: forget it now
        }
        Row first = rows.next();
        dropped.add(rows.size());
        getHandle().registerTimer(millis(first.get(timeColumn)));
        return Iterator$.MODULE$.single(first);
    }

    @Override
    public Iterator<Row> handleExpiredTimer(String key, TimerValues timerValues, ExpiredTimerInfo expiredTimerInfo) {
        return Iterator$.MODULE$.empty();
    }

    private static long millis(Object time) {
        return time instanceof Instant ? ((Instant) time).toEpochMilli() : ((Timestamp) time).getTime();
    }
}
