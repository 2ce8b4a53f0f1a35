"""The sink as a program: start-up wiring and the command line. Only the entry points
(``atlas_sink.__main__``, the ``atlas-sink`` script) import this package."""
