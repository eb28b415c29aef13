"""Progress on stderr: a bar on a terminal, periodic plain lines otherwise, JSON lines
with --log-json, nothing but errors with --quiet; and the final summary."""

import json
import sys
import time


class Progress:
    def __init__(self, total, *, log_json=False, quiet=False, stream=None, every_seconds=10.0):
        self.total = total
        self.log_json = log_json
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.every = every_seconds
        self.done = 0
        self.started = time.monotonic()
        self.last_line = self.started
        self.bar = None
        if not quiet and not log_json and _is_terminal(self.stream):
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="img", file=self.stream, dynamic_ncols=True,
                            smoothing=0.1)

    def event(self, kind, **fields):
        """A discrete event (shard finished, image skipped, ...)."""
        if self.quiet:
            return
        if self.log_json:
            self._json(kind, **fields)
        elif kind != "progress":
            message = fields.pop("message", None) or " ".join(f"{k}={v}" for k, v in fields.items())
            self._line(f"sightline: {kind}: {message}")

    def advance(self, images):
        self.done += images
        if self.bar is not None:
            self.bar.update(images)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every:
            self.last_line = now
            rate = self.done / max(now - self.started, 1e-9)
            remaining = (self.total - self.done) / rate if rate > 0 else float("inf")
            if self.log_json:
                self._json("progress", images=self.done, total=self.total,
                           images_per_second=round(rate, 2), eta_seconds=round(remaining, 1))
            elif not self.quiet:
                self._line(f"sightline: {self.done}/{self.total} images, {rate:.1f} img/s, "
                           f"eta {remaining:.0f}s")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def summary(self, **fields):
        """The closing line; a field that is None could not be measured (a rate over a
        run of one batch) and shows as n/a (null in JSON), never as a misleading 0."""
        self.close()
        if self.log_json:
            self._json("summary", **fields)
        elif not self.quiet:
            self._line("sightline: done: " + ", ".join(
                f"{k.replace('_', ' ')} {'n/a' if v is None else v}" for k, v in fields.items()))

    def _line(self, text):
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _json(self, kind, **fields):
        print(json.dumps({"event": kind, **fields}, sort_keys=True), file=self.stream, flush=True)


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
