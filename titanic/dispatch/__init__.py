"""The Titanic dispatcher: serves 9/TSP from the store and forwards stored requests to workers.

It owns what a dispatcher decides and the two loops that drive it: `planner` (a turn's
decisions over a store and a transport, without a socket or a clock), `schedule` (when a loop
runs its periodic work and wakes next), `in_flight` (each service's window), `services` (the
TSP handlers: a store and frames in, an answer out), `held_waits` (titanic.wait held until its
request finishes), `management` (titanic.manage), `store_identity` (one store per set of
brokers) and `settings` (DispatcherSettings, DispatcherStats); `standalone` is the dispatcher
with sockets of its own (Dispatcher, and DispatcherBase for both), `hosted` the one whose turns
run in the broker's loop. It may import the foundation, `titanic.protocol`, `titanic.security`,
`titanic.store`, `titanic.broker`, `titanic.client` and `titanic.worker`; never `titanic.ops`.
"""
