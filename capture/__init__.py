"""servemeta capture: the emitter a model server embeds to report its models' lifecycle."""

__version__ = "0.1.0"
