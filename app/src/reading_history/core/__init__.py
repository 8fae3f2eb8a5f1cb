"""Settings, database pool, logging and metrics shared by the whole service."""
