"""`synood serve`: a scoring service that holds one scoring setup in memory (see cli/serve.py).

Import-light: fastapi and uvicorn are imported by `service.build_app` and the command only, so
`synood --help` never pays for them (they are the optional `serve` extra).
"""
