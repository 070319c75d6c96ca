"""OpenAI-compatible front for the Triton deployment: FastAPI + uvicorn, a gRPC client of tritonserver.

`app.create_app` (routes), `parsers` (Nemotron 3 reasoning / tool-call parsing), `triton_backend` (the
asyncio gRPC stream to Triton), `launch` (the subprocess `serve --openai-port` starts). Importing this
package imports neither FastAPI nor torch.
"""
