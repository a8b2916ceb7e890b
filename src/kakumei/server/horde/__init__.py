"""The AI Horde v2 API (/api/v2): Horde clients and workers against this server, unchanged."""
