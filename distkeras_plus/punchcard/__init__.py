"""Punchcard: a job daemon that runs `dk train` for authenticated remote users.

One job per module: `spec` (the job schema), `store` (SQLite), `users` (tokens), `modelcheck`
(loading uploads in Keras' safe mode, in a child process), `procs` (process sessions), `runner`
(the queue and the training children), `limits` (what one client may cost), `app` (the HTTP API
and page), `client` and `cli`.
"""

DEFAULT_PORT = 8765
DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}"
