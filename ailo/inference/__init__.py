"""Distributed-inference rooms (SPEC R8, R9).

A room splits a Llama-2, Qwen2 or `ailo` GPT model into contiguous spans of half-layers,
one per node (`plan`); each node loads only its span from the checkpoint (`loader`,
`blocks`) and serves binary activation frames over HTTP (`node`, `wire`); the coordinator
keeps membership (`rooms`), routes each request through the spans with a KV cache on every
node, samples, fails over to replicas (`generate`) and pays each processing node 0.05 ALC
per completed request through an `InferenceRewardSink` (`rewards`). The HTTP API is
`ailo.server.rooms_api.make_rooms_router`.
"""
