"""servemeta atlas_sink: model lifecycle events from Kafka become catalog entities and lineage."""

__version__ = "0.1.0"
