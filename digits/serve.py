"""python -m digits.serve: a local page where you draw a digit with the mouse or a finger and
watch the model's probabilities for 0-9 change as you draw. Serves the registered champion
by default, on 127.0.0.1 only unless told otherwise; the page fetches nothing from the
network.

    python -m digits.serve                # then open http://127.0.0.1:8000
"""

from __future__ import annotations

import base64
import binascii
import html
import io
import socket
import threading
from collections.abc import Sequence
from importlib import resources

import numpy as np
from pydantic import BaseModel

from digits import classifier, preparation
from harness import cli
from harness.errors import UserError

DEFAULT_PORT = 8000
MAX_IMAGE_BYTES = 2_000_000  # a 280x280 canvas PNG is about 10 kB


class Drawing(BaseModel):
    """The endpoint's request body (at module level: FastAPI resolves it by name)."""
    image: str  # a data URL (data:image/png;base64,...) or bare base64


def make_app(model, model_name: str):
    """The page at / and its JSON endpoint POST /api/predict {"image": PNG data URL}."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    page = resources.files("digits").joinpath("draw.html").read_text()
    page = page.replace("{{MODEL}}", html.escape(model_name))
    predicting = threading.Lock()  # one prediction at a time: the model is not shared safely
    # No /docs: FastAPI's docs page loads its scripts from a CDN.
    app = FastAPI(title="mnist-sweeps: draw a digit", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError):
        return JSONResponse({"error": 'expected a JSON object {"image": "data:image/png;base64,..."}'},
                            status_code=400)

    @app.exception_handler(UserError)
    async def unusable(request: Request, error: UserError):
        return JSONResponse({"error": str(error)}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def draw_page():
        return page

    @app.post("/api/predict")
    def predict(drawing: Drawing):
        digit = preparation.from_image_bytes(decode(drawing.image), "the drawing")
        with predicting:
            probability = classifier.probabilities(model, digit[np.newaxis])[0]
        return {"label": int(probability.argmax()), "probabilities": [round(float(p), 6) for p in probability],
                "model_input": png_data_url(digit)}

    return app


def decode(data_url: str) -> bytes:
    if data_url.startswith("data:"):
        header, comma, encoded = data_url.partition(",")
        if not comma:
            raise UserError('the data URL has no comma between its header and its data ("data:image/png;base64,...")')
    else:
        encoded = data_url
    if len(encoded) > MAX_IMAGE_BYTES * 4 // 3:
        raise UserError(f"the drawing is over {MAX_IMAGE_BYTES // 1_000_000} MB")
    try:
        content = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise UserError("the image is not valid base64") from None
    if not content:
        raise UserError("the image is empty")
    return content


def png_data_url(digit: np.ndarray) -> str:
    """What the model saw, for the page to show beside the drawing."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(digit).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port") from None


def parse_args(argv: Sequence[str] | None):
    parser = cli.ArgumentParser(prog="python -m digits.serve", description=__doc__.splitlines()[0])
    cli.add_model_arguments(parser, default_model=classifier.CHAMPION)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=cli.int_at_least(1), default=DEFAULT_PORT,
                        help=f"(default: {DEFAULT_PORT})")
    args = parser.parse_args(argv)
    if args.port > 65535:
        parser.error(f"argument --port: {args.port} is not a port number (1-65535)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    args = parse_args(argv)
    check_port_free(args.host, args.port)
    model = classifier.load(args.model, args.tracking_uri)
    app = make_app(model, args.model)
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"Serving {args.model} on http://{url_host}:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    cli.run(main)
