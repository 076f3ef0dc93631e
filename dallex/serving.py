"""A page and a JSON endpoint to try a trained model, batching many clients.

    python -m experiments.serve --workdir runs/shapes32      # http://127.0.0.1:8000/

``GET /`` is the page (prompt, seed, number of images, truncation; the
images and the time they took). ``POST /api/generate`` takes
``{"prompt": str, "seed": int, "num": int, "truncation": float}`` (all but
the prompt optional) and answers ``{"images": [PNG data URLs], "seconds",
"step"}``. Requests wait in one bounded queue; one worker thread takes as
many as fit in ``max_batch`` images and draws them in one jitted call
(``sampling.sample_rows``), padded to a power of two so each size compiles
once. Throughput grows with load because the requests that arrive while a
batch runs share the next. A full queue answers 503 with ``Retry-After``;
every input is checked (4xx with the reason); the server reads and writes
no files. Built on the standard library's ``http.server``: nothing to
install, and a test starts it in a thread in milliseconds.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import http.server
import io
import json
import math
import queue
import threading
import time

import numpy as np
from PIL import Image

from dallex import visualize
from dallex.sampling import Sampler, pad_rows, sample_rows

MAX_BODY = 16384  # bytes of a request body
MAX_DRAIN = 4 << 20  # bytes of a too-long body read before answering 413
MAX_SEED = 2**31 - 1


class BadRequest(ValueError):
  """A request the server refuses; ``status`` is its HTTP code."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


class Busy(RuntimeError):
  """The queue is full."""


@dataclasses.dataclass(frozen=True)
class Request:
  prompt: str
  seed: int = 0
  num: int = 4
  truncation: float = 1.0


def parse_request(body: bytes, max_prompt: int, max_images: int) -> Request:
  """A checked ``Request`` from a JSON body.

  Raises:
    BadRequest: 400 naming the field and what is wrong, or 413 for a body
      over ``MAX_BODY`` bytes.
  """
  if len(body) > MAX_BODY:
    raise BadRequest(413, f"the body is {len(body)} bytes; at most {MAX_BODY}")
  try:
    fields = json.loads(body)
  except (ValueError, UnicodeDecodeError) as e:
    raise BadRequest(400, f"the body is not JSON ({e})") from None
  if not isinstance(fields, dict):
    raise BadRequest(400, "the body must be a JSON object")
  known = {f.name for f in dataclasses.fields(Request)}
  if unknown := sorted(set(fields) - known):
    raise BadRequest(400, f"unknown fields {unknown}; known: {sorted(known)}")
  prompt = fields.get("prompt")
  if not isinstance(prompt, str) or not prompt.strip():
    raise BadRequest(400, "prompt must be a non-empty string")
  if len(prompt.encode()) > max_prompt:
    raise BadRequest(
        400,
        f"prompt is {len(prompt.encode())} bytes; the model reads {max_prompt}",
    )
  if any(ord(c) < 32 or ord(c) == 127 for c in prompt):
    raise BadRequest(400, "prompt must not hold control characters")

  def integer(name, low, high):
    value = fields.get(name, getattr(Request, name))
    if isinstance(value, bool) or not isinstance(value, int):
      raise BadRequest(400, f"{name} must be an integer")
    if not low <= value <= high:
      raise BadRequest(400, f"{name} must be in [{low}, {high}], got {value}")
    return value

  truncation = fields.get("truncation", Request.truncation)
  if isinstance(truncation, bool) or not isinstance(truncation, (int, float)):
    raise BadRequest(400, "truncation must be a number")
  if not (math.isfinite(truncation) and 0 < truncation <= 2):
    raise BadRequest(400, f"truncation must be in (0, 2], got {truncation}")
  return Request(
      prompt,
      integer("seed", 0, MAX_SEED),
      integer("num", 1, max_images),
      float(truncation),
  )


@dataclasses.dataclass
class _Job:
  request: Request
  future: concurrent.futures.Future


class Batcher:
  """One worker drawing the queued requests in batches of up to ``max_batch``
  images. ``submit`` raises ``Busy`` when ``queue_size`` requests wait."""

  def __init__(
      self, sampler: Sampler, max_batch: int = 64, queue_size: int = 64
  ):
    if max_batch < 1 or queue_size < 1:
      raise ValueError(
          f"max_batch ({max_batch}) and queue_size ({queue_size}) must be >= 1"
      )
    self.sampler = sampler
    self.max_batch = max_batch
    self._queue: queue.Queue[_Job] = queue.Queue(queue_size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self.batches = 0  # how many calls drew the requests so far

  def start(self) -> Batcher:
    self._thread.start()
    return self

  def stop(self) -> None:
    self._stop.set()
    self._thread.join()

  def submit(self, request: Request) -> concurrent.futures.Future:
    """A future of the request's uint8 images [num, R, R, 3]."""
    if request.num > self.max_batch:
      raise ValueError(f"num {request.num} > max_batch {self.max_batch}")
    job = _Job(request, concurrent.futures.Future())
    try:
      self._queue.put_nowait(job)
    except queue.Full:
      raise Busy(f"{self._queue.maxsize} requests are waiting") from None
    return job.future

  def _run(self) -> None:
    carry = None
    while not self._stop.is_set():
      if carry is None:
        try:
          carry = self._queue.get(timeout=0.1)
        except queue.Empty:
          continue
      jobs, rows, carry = [carry], carry.request.num, None
      while rows < self.max_batch:
        try:
          job = self._queue.get_nowait()
        except queue.Empty:
          break
        if rows + job.request.num > self.max_batch:
          carry = job
          break
        jobs.append(job)
        rows += job.request.num
      self._draw(jobs, rows)

  def _draw(self, jobs: list[_Job], rows: int) -> None:
    requests = [j.request for j in jobs]
    counts = [r.num for r in requests]
    texts = [r.prompt for r in requests for _ in range(r.num)]
    seeds = np.repeat(np.array([r.seed for r in requests], np.int32), counts)
    indices = np.concatenate([np.arange(n, dtype=np.int32) for n in counts])
    truncation = np.repeat(
        np.array([r.truncation for r in requests], np.float32), counts
    )
    size = 1 << (rows - 1).bit_length()  # a power of two: few compilations
    try:
      ids, mask = self.sampler.tokenizer.encode(texts)
      images = sample_rows(
          self.sampler.generator,
          self.sampler.params,
          pad_rows(ids, size),
          pad_rows(mask, size),
          pad_rows(seeds, size),
          pad_rows(indices, size),
          pad_rows(truncation, size),
          z_dim=self.sampler.config.model.z_dim,
          ca_dim=self.sampler.config.model.ca_dim,
      )
      images = visualize.to_uint8(np.asarray(images)[:rows])
    except Exception as e:  # every waiting client hears of it
      for job in jobs:
        job.future.set_exception(e)
      return
    self.batches += 1
    start = 0
    for job in jobs:
      job.future.set_result(images[start : start + job.request.num])
      start += job.request.num


def _png_data_url(image: np.ndarray) -> str:
  out = io.BytesIO()
  Image.fromarray(image).save(out, format="PNG")
  return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>dallex</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 50em; }
input[type=text] { width: 30em; }
#images img { width: 128px; height: 128px; image-rendering: pixelated; margin: 4px; }
#status { color: #555; }
</style></head>
<body>
<h1>dallex</h1>
<p>STEP_LINE</p>
<form id="form">
<p><input type="text" id="prompt" name="prompt" value="a small red circle on the left"
  maxlength="MAX_PROMPT" aria-label="prompt"></p>
<p>seed <input type="number" id="seed" value="0" min="0" max="MAX_SEED">
images <input type="number" id="num" value="4" min="1" max="MAX_IMAGES">
truncation <input type="number" id="truncation" value="1" min="0.05" max="2" step="0.05">
<button type="submit" id="go">Draw</button></p>
</form>
<p id="status"></p>
<div id="images"></div>
<script>
document.getElementById("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const status = document.getElementById("status");
  const box = document.getElementById("images");
  status.textContent = "drawing...";
  const body = {
    prompt: document.getElementById("prompt").value,
    seed: parseInt(document.getElementById("seed").value, 10),
    num: parseInt(document.getElementById("num").value, 10),
    truncation: parseFloat(document.getElementById("truncation").value),
  };
  const response = await fetch("/api/generate", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body)});
  const answer = await response.json();
  if (!response.ok) { status.textContent = "error: " + answer.error; return; }
  box.replaceChildren(...answer.images.map((src) => {
    const img = document.createElement("img"); img.src = src; img.alt = body.prompt;
    return img; }));
  status.textContent = answer.images.length + " images in " +
    answer.seconds.toFixed(3) + " s";
});
</script>
</body></html>
"""


class _Server(http.server.ThreadingHTTPServer):
  # Python's default listen queue holds 5 connections: the kernel drops
  # those of a larger burst of clients, who try again a second or more later.
  request_queue_size = 128
  daemon_threads = True


def make_server(
    batcher: Batcher,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_images: int = 16,
    timeout_s: float = 60.0,
) -> http.server.ThreadingHTTPServer:
  """An HTTP server (not yet serving: call ``serve_forever``) in front of a
  started ``batcher``; port 0 picks a free one (``server.server_address``)."""
  sampler = batcher.sampler
  max_prompt = sampler.config.model.text.max_length
  max_images = min(max_images, batcher.max_batch)
  page = (
      _PAGE.replace("STEP_LINE", f"The model of step {sampler.step}.")
      .replace("MAX_PROMPT", str(max_prompt))
      .replace("MAX_SEED", str(MAX_SEED))
      .replace("MAX_IMAGES", str(max_images))
  ).encode()

  class Handler(http.server.BaseHTTPRequestHandler):
    timeout = 10  # seconds a client may take to send its request

    def log_message(self, *args):  # one line per request is noise under load
      del args

    def _send(self, status: int, body: bytes, kind: str, headers=()):
      self.send_response(status)
      self.send_header("Content-Type", kind)
      self.send_header("Content-Length", str(len(body)))
      for name, value in headers:
        self.send_header(name, value)
      self.end_headers()
      self.wfile.write(body)

    def _json(self, status: int, obj, headers=()):
      self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def do_GET(self):
      if self.path in ("/", "/index.html"):
        self._send(200, page, "text/html; charset=utf-8")
      else:
        self._json(404, {"error": f"no page {self.path[:100]!r}"})

    def do_POST(self):
      if self.path != "/api/generate":
        self._json(404, {"error": f"no endpoint {self.path[:100]!r}"})
        return
      try:
        length = int(self.headers.get("Content-Length", ""))
      except ValueError:
        self._json(411, {"error": "a Content-Length header is needed"})
        return
      if not 0 <= length <= MAX_BODY:
        # A body up to MAX_DRAIN is read and dropped, so that the client,
        # still sending, hears the answer rather than a reset connection.
        left = length if length <= MAX_DRAIN else 0
        while left > 0 and (chunk := self.rfile.read(min(left, 65536))):
          left -= len(chunk)
        self.close_connection = True
        self._json(413, {"error": f"the body is longer than {MAX_BODY} bytes"})
        return
      started = time.perf_counter()
      try:
        request = parse_request(self.rfile.read(length), max_prompt, max_images)
        future = batcher.submit(request)
      except BadRequest as e:
        self._json(e.status, {"error": str(e)})
        return
      except Busy as e:
        self._json(503, {"error": f"busy: {e}"}, [("Retry-After", "1")])
        return
      try:
        images = future.result(timeout=timeout_s)
      except concurrent.futures.TimeoutError:
        self._json(503, {"error": "timed out"}, [("Retry-After", "5")])
        return
      except Exception as e:
        self._json(500, {"error": f"{type(e).__name__}: {e}"})
        return
      self._json(
          200,
          {
              "images": [_png_data_url(x) for x in images],
              "seconds": round(time.perf_counter() - started, 4),
              "step": sampler.step,
          },
      )

  return _Server((host, port), Handler)
