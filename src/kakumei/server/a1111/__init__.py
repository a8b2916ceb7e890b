"""The AUTOMATIC1111 API (/sdapi/v1): request and response bodies (models.py), the pure mapping
to and from kakumei's requests and jobs (mapping.py), callers' own options (options.py), Basic or
Bearer authentication (auth.py) and the routes (routes.py)."""
