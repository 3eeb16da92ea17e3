"""The seed's FastAPI `/chat` example as `async def` with `openai.AsyncOpenAI`: the comparison
point of bench/concurrency.py (issue 18: "~60/s here").

    LLM_BASE_URL=http://127.0.0.1:8100/v1 .venv/bin/python -m uvicorn seed_app:app \\
        --app-dir bench --workers 2 --port 8200

POST /chat with X-Request-ID, X-Session-ID and X-User-ID headers and {"message": ...} answers
{"response": ...}: one model call, nothing stored, no authentication (the seed trusts X-User-ID).
GET /health answers {"ok": true}.

MLflow is left out. The seed wraps the handler in `@mlflow.trace` written above `@app.post`, so
FastAPI registers the undecorated function and no trace is ever made (../shared/SEED-NOTES.md);
its `mlflow.update_current_trace(...)` call then only logs "No active trace found". What the seed
costs per request is this handler; MLflow would add ~2 s of import and ~190 MB per worker.
"""

import os

from fastapi import FastAPI, Request, Response
from openai import AsyncOpenAI
from pydantic import BaseModel

app = FastAPI(title="seed chat")
client = AsyncOpenAI(
    base_url=os.environ.get("LLM_BASE_URL", "http://127.0.0.1:8100/v1"),
    api_key=os.environ.get("LLM_API_KEY") or "not-needed",
    timeout=float(os.environ.get("LLM_TIMEOUT_S", "30")),
    max_retries=0,
)
MODEL = os.environ.get("LLM_MODEL") or "fake"


class ChatRequest(BaseModel):
    message: str


@app.post("/chat")
async def chat(request: Request, response: Response, chat_request: ChatRequest) -> dict:
    # The seed hands the three headers to mlflow.update_current_trace (see above); here the
    # request id is echoed and the user id goes to the model as OpenAI's end-user id.
    if request_id := request.headers.get("X-Request-ID"):
        response.headers["X-Request-ID"] = request_id
    completion = await client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": chat_request.message},
        ],
        user=request.headers.get("X-User-ID") or "anonymous",
    )
    return {"response": completion.choices[0].message.content}


@app.get("/health")
async def health() -> dict:
    return {"ok": True}
