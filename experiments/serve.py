"""Serves a page and a JSON endpoint to try a trained model (dallex.serving).

python -m experiments.serve --workdir runs/shapes32 [--port 8000] [--host 127.0.0.1]
curl -s localhost:8000/api/generate -d '{"prompt": "a small red circle on the left", "num": 4}'
"""

from absl import app, flags, logging

from dallex import hugepages

flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
flags.DEFINE_string(
    "host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface)."
)
flags.DEFINE_integer("port", 8000, "Port (0: any free one).", lower_bound=0)
flags.DEFINE_integer(
    "step", None, "Serve this checkpoint (default: the newest).", lower_bound=0
)
flags.DEFINE_integer(
    "max_batch", 64, "Images drawn in one call at the most.", lower_bound=1
)
flags.DEFINE_integer(
    "max_images", 16, "Images one request may ask for.", lower_bound=1
)
flags.DEFINE_integer(
    "queue_size", 64, "Requests that may wait; more get 503.", lower_bound=1
)
FLAGS = flags.FLAGS


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax warns about read-only managers.
  import dallex
  from dallex import serving

  batcher = serving.Batcher(
      dallex.load(FLAGS.workdir, step=FLAGS.step),
      max_batch=FLAGS.max_batch,
      queue_size=FLAGS.queue_size,
  ).start()
  server = serving.make_server(
      batcher, FLAGS.host, FLAGS.port, max_images=FLAGS.max_images
  )
  host, port = server.server_address[:2]
  print(
      f"dallex: serving step {batcher.sampler.step} at http://{host}:{port}/",
      flush=True,
  )
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
    batcher.stop()


if __name__ == "__main__":
  hugepages.relaunch()
  app.run(main)
