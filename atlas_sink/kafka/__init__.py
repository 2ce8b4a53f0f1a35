"""The sink's Kafka edge: the live consumer loop, bounded snapshot reads, replay, and the
dead-letter topic."""
