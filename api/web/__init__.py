"""The HTTP control plane: FastAPI app, routes, schemas, auth, SSE events, metrics, uploads."""
