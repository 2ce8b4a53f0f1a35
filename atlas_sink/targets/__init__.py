"""Where entities go: Atlas over REST, Atlas's hook topic, or the embedded local catalog.

Each implements ``atlas_sink.core.target.Target``, and none imports another.
"""
