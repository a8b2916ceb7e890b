"""The engine: torch + diffusers only. Never imports server, store or worker."""
