"""SQLModel storage: tables, the engine factory, repositories that never commit themselves."""
