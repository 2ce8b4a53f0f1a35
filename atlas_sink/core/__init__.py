"""Events to entities, all pure: names, validation, decoding, translation, coalescing, and the
pipeline over them. No Kafka, HTTP or SQLite here (an import-linter contract checks it)."""
