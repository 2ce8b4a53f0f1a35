"""The sink process's exit codes, in one place: the CLI returns them, the Kafka edge raises
``SinkFatal`` with them, and docs/operations.md lists them (a test keeps the two in step)."""

EXIT_OK = 0
EXIT_FAILURE = 1  # unexpected error; also type definitions that conflict with Atlas's
EXIT_USAGE = 2  # bad arguments or configuration
EXIT_TARGET_AUTH = 3  # the target refused the credentials
EXIT_KAFKA = 4  # Kafka refused the sink, or a topic it needs does not exist
EXIT_TARGET_UNAVAILABLE = 5  # a one-shot command found the target down
EXIT_FORCED = 6  # a second signal forced the exit before the shutdown finished
EXIT_INTERRUPTED = 130  # stopped by a signal before the work was complete

ALL = (
    EXIT_OK,
    EXIT_FAILURE,
    EXIT_USAGE,
    EXIT_TARGET_AUTH,
    EXIT_KAFKA,
    EXIT_TARGET_UNAVAILABLE,
    EXIT_FORCED,
    EXIT_INTERRUPTED,
)
