"""HTTP and WebSocket: JSON over a WSGI app, heads parsed from bytes, the services' gunicorn worker,
the forwarder to a service, metrics."""
