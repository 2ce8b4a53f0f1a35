"""Apache Atlas itself: one HTTP client, the JSON of its entities, and the type definitions
(the project's own, and its definitions of Atlas's)."""
