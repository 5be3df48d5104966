"""The order workflow and the types it exchanges. Deterministic code only."""
