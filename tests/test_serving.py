"""The page and JSON endpoint of dallex.serving, on the loopback address."""

import base64
import concurrent.futures
import fcntl
import http.client
import io
import json
import socket
import os
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
from PIL import Image

import dallex
from dallex import serving, visualize
from dallex.sampling import sample_rows


@pytest.fixture(scope="module")
def sampler(tiny_run):
  return dallex.load(str(tiny_run[0]))


@pytest.fixture(scope="module")
def server(sampler):
  """A server on a free port with a started batcher: (host, port, batcher)."""
  batcher = serving.Batcher(sampler, max_batch=16, queue_size=32).start()
  httpd = serving.make_server(batcher, port=0, max_images=8, timeout_s=120)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield (*httpd.server_address[:2], batcher)
  httpd.shutdown()
  httpd.server_close()
  batcher.stop()


def _request(address, method, path, body=None, headers=None, timeout=180):
  """(status, headers, parsed JSON or text) of one request."""
  conn = http.client.HTTPConnection(*address[:2], timeout=timeout)
  try:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
  finally:
    conn.close()
  kind = response.getheader("Content-Type", "")
  parsed = json.loads(data) if kind == "application/json" else data.decode()
  return response.status, dict(response.getheaders()), parsed


def _generate(address, **fields):
  return _request(address, "POST", "/api/generate", json.dumps(fields).encode())


def _images(answer):
  return np.stack(
      [
          np.asarray(
              Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
          )
          for url in answer["images"]
      ]
  )


def test_rows_with_their_own_seeds_are_the_images_generate_draws(sampler):
  """Rows of different requests in one call: each is the image ``generate``
  draws for that prompt, seed and index alone (to one uint8 level)."""
  ids, mask = sampler.tokenizer.encode(["a red circle"] * 3 + ["a blue square"])
  images = sample_rows(
      sampler.generator,
      sampler.params,
      ids,
      mask,
      np.array([5, 5, 5, 9], np.int32),
      np.array([0, 1, 2, 0], np.int32),
      np.array([1.0, 1.0, 1.0, 0.5], np.float32),
      z_dim=sampler.config.model.z_dim,
      ca_dim=sampler.config.model.ca_dim,
  )
  got = visualize.to_uint8(np.asarray(images)).astype(int)
  want = np.concatenate(
      [
          sampler.generate(["a red circle"], seed=5, num_per_prompt=3),
          sampler.generate(["a blue square"], seed=9, truncation=0.5),
      ]
  ).astype(int)
  assert np.abs(got - want).max() <= 1
  assert not np.array_equal(got[0], got[1])  # indices differ: images differ


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{", 400, "not JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"prompt": 3}', 400, "prompt must be a non-empty string"),
        (b'{"prompt": "  "}', 400, "non-empty"),
        (b'{"prompt": "a", "colour": 1}', 400, "unknown fields ['colour']"),
        (b'{"prompt": "a\\u0000b"}', 400, "control characters"),
        (b'{"prompt": "a", "num": 0}', 400, "num must be in [1, 8], got 0"),
        (b'{"prompt": "a", "num": 9}', 400, "num must be in [1, 8]"),
        (b'{"prompt": "a", "num": 2.5}', 400, "num must be an integer"),
        (b'{"prompt": "a", "num": true}', 400, "num must be an integer"),
        (
            b'{"prompt": "a", "seed": -1}',
            400,
            "seed must be in [0, 2147483647]",
        ),
        (
            b'{"prompt": "a", "truncation": 0}',
            400,
            "truncation must be in (0, 2]",
        ),
        (b'{"prompt": "a", "truncation": NaN}', 400, "truncation must be in"),
        (b'{"prompt": "a", "truncation": "1"}', 400, "must be a number"),
        (b"x" * 20000, 413, "at most 16384"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(body, status, message):
  with pytest.raises(serving.BadRequest) as e:
    serving.parse_request(body, max_prompt=16, max_images=8)
  assert e.value.status == status and message in str(e.value)
  with pytest.raises(serving.BadRequest, match="prompt is 17 bytes"):
    serving.parse_request(b'{"prompt": "' + b"a" * 17 + b'"}', 16, 8)
  assert serving.parse_request(b'{"prompt": "a"}', 16, 8) == serving.Request(
      "a"
  )


def test_the_page_and_the_endpoint_answer(server, sampler):
  status, _, page = _request(server, "GET", "/")
  assert status == 200 and 'id="prompt"' in page and "/api/generate" in page
  status, _, answer = _generate(
      server, prompt="a small red circle", seed=7, num=3
  )
  assert status == 200 and answer["step"] == sampler.step
  want = sampler.generate(["a small red circle"], seed=7, num_per_prompt=3)
  got = _images(answer)
  assert got.shape == want.shape
  assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_many_clients_are_all_answered_in_shared_batches(server):
  """200 requests from 16 clients at once: each answered (200, or 503 when
  the queue is full), none dropped or hung, and requests share calls."""
  host, port, batcher = server
  before = batcher.batches

  def one(i):
    return _generate(
        server, prompt=f"a small red circle {i % 5}", seed=i, num=2
    )

  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    answers = list(pool.map(one, range(200), timeout=600))
  statuses = [status for status, _, _ in answers]
  assert set(statuses) <= {200, 503} and statuses.count(200) >= 100
  for status, headers, answer in answers:
    if status == 200:
      assert _images(answer).shape == (2, 32, 32, 3)
    else:
      assert headers["Retry-After"] == "1" and "busy" in answer["error"]
  assert batcher.batches - before < statuses.count(200)


def test_a_burst_of_connections_waits_in_the_listen_queue(server):
  """64 clients connecting at once to a server that has not yet accepted
  any: all connect at once (the kernel drops connections past a full listen
  queue, and their clients try again only a second or more later)."""
  httpd = serving.make_server(server[2], port=0)
  try:
    clients = [
        socket.create_connection(httpd.server_address[:2], timeout=0.5)
        for _ in range(64)
    ]
    for client in clients:
      client.close()
  finally:
    httpd.server_close()


def test_hostile_requests_get_4xx_and_the_server_keeps_serving(server):
  bad = [
      ("GET", "/../../etc/passwd", None, {}),
      ("GET", "/api/generate", None, {}),
      ("POST", "/api/../../x", b"{}", {}),
      ("POST", "/api/generate", b"x" * (1 << 20), {}),  # 1 MB
      ("POST", "/api/generate", b"{}", {"Content-Length": "abc"}),
      (
          "POST",
          "/api/generate",
          json.dumps({"prompt": "a" * 1000}).encode(),
          {},
      ),
      (
          "POST",
          "/api/generate",
          b'{"prompt": "../../etc/passwd", "num": -2}',
          {},
      ),
      ("POST", "/api/generate", b'{"prompt": "a", "num": 100000}', {}),
      ("POST", "/api/generate", b'{"prompt": "a", "seed": 1e300}', {}),
      ("POST", "/api/generate", b"\xff\xfe", {}),
  ]
  for i in range(50):
    method, path, body, headers = bad[i % len(bad)]
    status, _, answer = _request(server, method, path, body, headers)
    assert 400 <= status < 500, (method, path, status)
    assert answer["error"]
  status, _, answer = _generate(server, prompt="a small blue square", num=1)
  assert status == 200 and len(answer["images"]) == 1


def test_a_full_queue_answers_503_with_a_retry_hint(sampler):
  batcher = serving.Batcher(sampler, max_batch=4, queue_size=1)  # not started
  batcher.submit(serving.Request("a"))
  with pytest.raises(serving.Busy):
    batcher.submit(serving.Request("b"))
  httpd = serving.make_server(batcher, port=0)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  try:
    status, headers, answer = _generate(httpd.server_address, prompt="c")
  finally:
    httpd.shutdown()
    httpd.server_close()
  assert status == 503 and headers["Retry-After"] == "1"
  assert "1 requests are waiting" in answer["error"]


class _Chromium:
  """Headless Chromium driven over the DevTools protocol on a pipe
  (``--remote-debugging-pipe``: JSON messages ending in NUL on fds 3 and 4),
  so no driver or websocket package is needed."""

  def __init__(self, binary, profile):
    def above_4(fd):  # so that moving one to 3 or 4 cannot clobber the other
      high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
      os.close(fd)
      return high

    child_in, self._to = map(above_4, os.pipe())
    self._from, child_out = map(above_4, os.pipe())
    # bash moves the pipes to fds 3 and 4 (no Python runs in the child).
    self._proc = subprocess.Popen(
        ["bash", "-c", f'exec "$0" "$@" 3<&{child_in} 4>&{child_out}', binary,
         "--headless", "--no-sandbox", "--disable-gpu",
         "--remote-debugging-pipe", f"--user-data-dir={profile}",
         "--window-size=800,600", "about:blank"],
        pass_fds=(child_in, child_out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(child_in)
    os.close(child_out)
    self._buffer, self._id, self.session = b"", 0, None

  def send(self, method, **params):
    self._id += 1
    message = {"id": self._id, "method": method, "params": params}
    if self.session and not method.startswith("Target."):
      message["sessionId"] = self.session
    os.write(self._to, json.dumps(message).encode() + b"\0")
    while True:
      while b"\0" not in self._buffer:
        chunk = os.read(self._from, 1 << 20)
        assert chunk, "Chromium closed the pipe"
        self._buffer += chunk
      raw, self._buffer = self._buffer.split(b"\0", 1)
      reply = json.loads(raw)
      if reply.get("id") == self._id:
        assert "error" not in reply, reply
        return reply["result"]

  def evaluate(self, expression):
    result = self.send(
        "Runtime.evaluate", expression=expression, awaitPromise=True
    )
    return result["result"].get("value")

  def close(self):
    self._proc.kill()
    self._proc.wait()


def test_a_real_browser_types_a_prompt_and_sees_the_images(server, tmp_path):
  binary = shutil.which("chromium") or shutil.which("chromium-browser")
  if binary is None:
    pytest.skip("no Chromium here (apt-get install chromium; .ci/run does)")
  browser = _Chromium(binary, tmp_path / "profile")
  try:
    target = browser.send("Target.createTarget", url="about:blank")
    browser.session = browser.send(
        "Target.attachToTarget", targetId=target["targetId"], flatten=True
    )["sessionId"]
    browser.send("Page.enable")
    browser.send("Page.navigate", url=f"http://{server[0]}:{server[1]}/")
    deadline = time.time() + 60
    while browser.evaluate("document.readyState") != "complete":
      assert time.time() < deadline
      time.sleep(0.1)
    browser.evaluate(
        "const p = document.getElementById('prompt'); p.value = ''; p.focus()"
    )
    browser.send("Input.insertText", text="a large blue square at the top")
    browser.evaluate("document.getElementById('num').value = 3")
    browser.evaluate("document.getElementById('go').click()")
    count = "document.querySelectorAll('#images img').length"
    while browser.evaluate(count) != 3:
      assert time.time() < deadline + 120, browser.evaluate(
          "document.getElementById('status').textContent"
      )
      time.sleep(0.2)
    assert browser.evaluate(
        "Array.from(document.images).every((i) => i.complete && i.naturalWidth == 32)"
    )
    status = browser.evaluate("document.getElementById('status').textContent")
    assert status.startswith("3 images in "), status
    shot = base64.b64decode(
        browser.send("Page.captureScreenshot", format="png")["data"]
    )
  finally:
    browser.close()
  picture = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))
  # The page is white and black text; the drawn images bring other colours.
  coloured = np.abs(picture.astype(int) - picture.mean(-1, keepdims=True)).max(
      -1
  )
  assert (coloured > 30).sum() > 1000
  out = os.environ.get("DALLEX_SCREENSHOT")
  if out:
    with open(out, "wb") as f:
      f.write(shot)
