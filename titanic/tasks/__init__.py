"""The task API: plain Python functions run by workers, called through the Titanic service.

It owns `define` (`@titanic.task` and `Task`: call, submit, map), `codec` (a call's arguments
and result on the wire, msgpack; the only module that imports it), `handles` (`Handle` and
`AsyncHandle` on a submitted task), `clients` (the default clients, `titanic.configure`) and
`current` (`titanic.current()`, the task a worker is running, and whether it was cancelled).
Users reach it through `titanic` (`titanic.task`, `titanic.Handle`, `titanic.configure`). It
may import the foundation, `titanic.protocol`, `titanic.security` and `titanic.client`; the
worker's side of a task is `titanic.worker.tasks`.
"""
