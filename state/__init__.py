"""Everything kept in Redis: one module per concern, one key prefix per concern."""
