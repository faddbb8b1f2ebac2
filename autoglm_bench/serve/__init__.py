"""The inference service (``python -m autoglm_bench.serve``): app (endpoints), scheduler (batching), pool
(model loading and release) and metrics (Prometheus). FastAPI and uvicorn come with the ``serve`` extra."""
