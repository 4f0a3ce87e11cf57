package churn.spark;

import java.util.ArrayList;
import java.util.List;

import org.apache.spark.sql.Column;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.functions;
import org.apache.spark.sql.streaming.ExpiredTimerInfo;
import org.apache.spark.sql.streaming.MapState;
import org.apache.spark.sql.streaming.OutputMode;
import org.apache.spark.sql.streaming.StatefulProcessor;
import org.apache.spark.sql.streaming.TTLConfig;
import org.apache.spark.sql.streaming.TimeMode;
import org.apache.spark.sql.streaming.TimerValues;
import org.apache.spark.util.LongAccumulator;

import scala.Tuple2;
import scala.collection.Iterator;
import scala.jdk.javaapi.CollectionConverters;

/**
 * Streaming de-duplication by the batches' own time whose state operations per record are one read and,
 * for a record kept, one write.
 *
 * <p>Records are grouped by a bucket of their key ({@link #BUCKETS} buckets, by Spark's Murmur3 hash of
 * the key), not by the key: each bucket holds a map from key to when it expires (the batch's time plus
 * the window, Spark's processing time being the batch's timestamp in the offset log, so a replayed batch
 * decides the same). A record is a duplicate while its key's expiry is later than the batch's time; a
 * record kept writes its key's expiry. Expired keys are removed by one timer per bucket, every half
 * window: a key stays at most one and a half windows, and the state stays bounded.
 *
 * <p>Keyed by the record's own key instead ({@link DropDuplicatesWithinWindow}), each record costs Spark a
 * group of its own, a scan of its key's timers, a read and two writes (a timer is indexed twice).
 *
 * <p>The number of buckets is part of the state's layout: a checkpoint must keep the one it started with.
 * Called from Python through {@link #applyInProcessingTime}, which also counts the duplicates. With a
 * flag column, duplicates are kept with the flag set to true instead of being dropped. Needs the RocksDB
 * state store.
 */
public final class DropDuplicatesByBucket extends StatefulProcessor<Integer, Row, Row> {
    private static final long serialVersionUID = 1L;

    /** Buckets the keys are grouped in (part of a checkpoint's state layout: never changed). */
    public static final int BUCKETS = 256;

    private final int keyColumn;
    private final long windowMs;
    private final int flagColumn;  // -1: duplicates are dropped
    private final LongAccumulator dropped;
    private transient MapState<String, Long> expiries;

    private DropDuplicatesByBucket(int keyColumn, long windowMs, int flagColumn, LongAccumulator dropped) {
        this.keyColumn = keyColumn;
        this.windowMs = windowMs;
        this.flagColumn = flagColumn;
        this.dropped = dropped;
    }

    /**
     * {@code rows} (no watermark) less those whose {@code keyColumn} came within {@code windowMs} of the
     * batches' processing time before; {@code dropped} counts them. With {@code flagColumn} (a boolean
     * column of {@code rows}, else null), those rows are kept with it set to true instead.
     */
    public static Dataset<Row> applyInProcessingTime(Dataset<Row> rows, String keyColumn, long windowMs,
                                                     String flagColumn, LongAccumulator dropped) {
        int key = rows.schema().fieldIndex(keyColumn);
        int flag = flagColumn == null ? -1 : rows.schema().fieldIndex(flagColumn);
        Column bucket = functions.pmod(functions.hash(rows.col(keyColumn)), functions.lit(BUCKETS)).alias("dedup_bucket");
        return rows
            .groupBy(bucket).as(Encoders.INT(), Encoders.row(rows.schema()))
            .transformWithState(new DropDuplicatesByBucket(key, windowMs, flag, dropped),
                                TimeMode.ProcessingTime(), OutputMode.Append(), Encoders.row(rows.schema()));
    }

    @Override
    public void init(OutputMode outputMode, TimeMode timeMode) {
        expiries = getHandle().getMapState("expiries", Encoders.STRING(), Encoders.LONG(), TTLConfig.NONE());
    }

    @Override
    public Iterator<Row> handleInputRows(Integer bucket, Iterator<Row> rows, TimerValues timerValues) {
        long now = timerValues.getCurrentProcessingTimeInMs();
        // state is only reachable while Spark calls this method: the rows are decided here, not lazily
        List<Row> out = new ArrayList<>();
        long duplicates = 0;
        while (rows.hasNext()) {
            Row row = rows.next();
            String key = row.getString(keyColumn);
            Long expires = expiries.getValue(key);
            if (expires != null && expires > now) {
                duplicates++;
                if (flagColumn >= 0) {
                    out.add(DropDuplicatesWithinWindow.flagged(row, flagColumn));
                }
                continue;
            }
            expiries.updateValue(key, now + windowMs);
            out.add(row);
        }
        dropped.add(duplicates);
        if (!getHandle().listTimers().hasNext()) {
            getHandle().registerTimer(now + windowMs);
        }
        return CollectionConverters.asScala(out.iterator());
    }

    @Override
    public Iterator<Row> handleExpiredTimer(Integer bucket, TimerValues timerValues, ExpiredTimerInfo expiredTimerInfo) {
        long now = timerValues.getCurrentProcessingTimeInMs();
        List<String> expired = new ArrayList<>();
        boolean left = false;
        Iterator<Tuple2<String, Long>> entries = expiries.iterator();
        while (entries.hasNext()) {
            Tuple2<String, Long> entry = entries.next();
            if (entry._2() <= now) {
                expired.add(entry._1());
            } else {
                left = true;
            }
        }
        for (String key : expired) {
            expiries.removeKey(key);
        }
        if (left) {
            getHandle().registerTimer(now + windowMs / 2);
        }
        return scala.collection.Iterator$.MODULE$.empty();
    }
}
