"""The lifecycle's settings (no import beyond the standard library: the CLI reads them)."""

# how often a consumer reads the registry: a promotion reaches consumers within this
REGISTRY_POLL_S = 2.0
