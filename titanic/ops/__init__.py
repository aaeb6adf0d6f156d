"""What runs beside the request path for operators: `metrics` (Prometheus metrics and health
checks of a broker and a dispatcher), `dashboard` (the web dashboard, on Flask) and `_http`
(the standard library's HTTP server, quiet). It may import every package but `titanic.bench`
and `titanic.testing`; nothing of titanic's but the CLI imports it.
"""
