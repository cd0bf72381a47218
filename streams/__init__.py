"""Kafka stream adapters: the consumer loop and its metrics."""
