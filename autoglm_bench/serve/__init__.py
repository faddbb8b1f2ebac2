"""The inference service (``python -m autoglm_bench.serve``): server (uvicorn, bounded shutdown), app (routes,
errors, OpenAPI), middleware (Host, auth, content type, body size, counting), service (what each endpoint
does), limits, bodies (request models), scheduler (batching, priorities with ageing, bounded queue,
deadlines), pool (model loading off the worker, release), specs (served models), tasks (loaded at start),
text (raw completions and logprobs), metrics (Prometheus), page. FastAPI and uvicorn come with the ``serve``
extra."""
