"""Spark Structured Streaming: Kafka -> Bronze/Silver Delta, quarantine and dead letters, features to Feast."""
