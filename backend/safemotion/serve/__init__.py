"""The SafeMotion HTTP server (`safemotion serve`): FastAPI app, micro-batched model worker, jobs, keys, audit log.

Modules, top-down: settings (flags) → server (start checks, logging, uvicorn) → app (routes) → schemas (request
and response bodies) → model_service (the model and its safety policies) → batcher (micro-batching worker thread)
→ jobs (batch jobs on top of the batcher) → store (database) → auth (keys, roles) → encoding (base64 arrays).
The API schema is committed as backend/openapi.json (`python -m safemotion.serve.openapi` regenerates it).
"""
