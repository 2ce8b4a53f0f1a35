"""What a running sink is configured with and reports: configuration, metrics and health,
structured logs, exit codes."""
