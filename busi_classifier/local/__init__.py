"""Local tools: the HTTP server that turns requests into API Gateway events, the client behind test.py."""
