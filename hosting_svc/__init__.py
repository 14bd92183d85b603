"""Hosting: packages model sources into validated images (or venvs) and serves them as KServe V2 endpoints.

server.py wires settings -> store, runtimes -> the `Hosting` facade (deployments.py) -> servicer.
The facade's jobs live in building.py, deploying.py, monitor.py and reconcile.py; every engine call
(Docker, local processes, Modal) goes through a `Runtime` in runtimes/.
"""
