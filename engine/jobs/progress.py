"""Progress on stderr: what is loading while the slow parts load, then a bar on a
terminal (periodic plain lines through a pipe or a file, JSON lines with --log-json,
nothing but errors with --quiet), and the closing summary.

Start-up stages ("loading model m.keras ...") are a status line on a terminal, replaced
by the next and erased before any other line, so a run refused after the model loaded
still ends with its one error line; through a pipe they are told once the first batch is
done, with their times; with --log-json each is an event as it starts.

The job's one rate is defined here, once (`Progress.rate`), and the bar, the plain
lines, the JSON lines, the summary and the manifest all read it: images per second in
steady state, the images computed after the first batch over the seconds after the
first batch. The first batch carries the start-up (tracing and compiling the step,
opening the first files), reported apart as `startup_seconds`.
"""

import json
import sys
import time

# What the rate means, as the manifest records it beside the figures.
RATE_DEFINITION = ("images computed after the first batch / seconds after the first batch; "
                   "the first batch (tracing, compiling, first reads) is start-up")
# Why a run has no rate, by the reason code `Progress.timing` gives.
NO_RATE = {
    "one_batch": "only one batch was computed, so the run was start-up only",
    "no_batch": "no batch was computed (every shard was already done, or the run stopped "
                "first)",
}
LINE_SECONDS = 10.0  # a plain progress line (a pipe, a file, --log-json) at most this often
BAR_WIDTH = 24
BAR_SECONDS = 0.1  # a terminal bar is redrawn at most this often


class Progress:
    """The job's progress and its clock.

    stage(what, detail=None): a start-up step ("loading model", "m.keras") before the
        slow part it names;
    begin(total): the number of images this worker will go through;
    advance(images): images computed by the step (a batch, or one call's batches): the
        first call ends the start-up, the next ones make the rate;
    skip_ahead(images): images of shards already done (a resume): counted, not timed.
    """

    def __init__(self, total=None, *, log_json=False, quiet=False, stream=None,
                 every_seconds=None, clock=time.monotonic):
        self.log_json = log_json
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.every = LINE_SECONDS if every_seconds is None else every_seconds
        self.clock = clock
        self.total = total
        self.done = 0
        self.started = clock()
        self.first_batch = None  # when the first batch's maps were back
        self.last_batch = None
        self.steady_images = 0
        self.last_line = self.started
        self.last_draw = -float("inf")
        self.bar = not quiet and not log_json and _is_terminal(self.stream)
        self.bar_shown = False
        self.stages = []  # (what, when it started)
        self.status_shown = False  # a start-up status on the terminal's last line

    # ------------------------------------------------------------------ the one rate

    def rate(self):
        """Images per second in steady state (see the module's docstring), or None
        before the second batch."""
        if self.first_batch is None or not self.steady_images:
            return None
        return self.steady_images / max(self.last_batch - self.first_batch, 1e-9)

    def timing(self):
        """The run's start-up and rate, as the summary and the manifest report them:
        startup_seconds (None before the first batch), images_per_second (None with
        rate_note saying why), steady_images, steady_seconds, definition."""
        rate = self.rate()
        figures = {
            "startup_seconds": (None if self.first_batch is None
                                else round(self.first_batch - self.started, 2)),
            "images_per_second": None if rate is None else round(rate, 2),
            "steady_images": self.steady_images,
            "steady_seconds": (0.0 if self.first_batch is None
                               else round(self.last_batch - self.first_batch, 6)),
            "definition": RATE_DEFINITION,
        }
        if rate is None:
            figures["rate_note"] = NO_RATE["one_batch" if self.first_batch else "no_batch"]
        return figures

    # ------------------------------------------------------------------ events

    def stage(self, what, detail=None):
        """A start-up step, said before the slow part it names."""
        now = self.clock()
        self.stages.append((what, now))
        message = f"{what}{'' if detail is None else f' {detail}'} ..."
        if self.quiet:
            return
        if self.log_json:
            self._json("stage", message=message, seconds=round(now - self.started, 2))
        elif self.bar:
            self.stream.write(f"\r\x1b[Ksightline: {message}")
            self.stream.flush()
            self.status_shown = True

    def _stage_times(self, until):
        """'loading TensorFlow 4.1 s, loading model 2.0 s, ...': each stage until the next."""
        ends = [when for _, when in self.stages[1:]] + [until]
        return ", ".join(f"{what} {end - start:.1f} s"
                         for (what, start), end in zip(self.stages, ends))

    def begin(self, total):
        self.total = total

    def skip_ahead(self, images):
        self.done += images
        self._show(self.clock())

    def advance(self, images):
        now = self.clock()
        self.done += images
        if self.first_batch is None:
            self.first_batch = now
            if not self.quiet and not self.log_json and not self.bar:
                stages = self._stage_times(now) or "tracing and compiling the step"
                self._line(f"sightline: first batch done after {now - self.started:.1f} s "
                           f"(start-up: {stages})")
        else:
            self.steady_images += images
        self.last_batch = now
        self._show(now)

    def event(self, kind, **fields):
        """A discrete event (shard finished, image skipped, ...)."""
        if self.quiet:
            return
        if self.log_json:
            self._json(kind, **fields)
        elif kind != "progress":
            message = fields.pop("message", None) or " ".join(f"{k}={v}" for k, v in fields.items())
            self._line(f"sightline: {kind}: {message}")

    def close(self):
        if self.status_shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.status_shown = False
        if self.bar and self.bar_shown:
            self._draw(force=True)
            print(file=self.stream, flush=True)
            self.bar_shown = False
        self.bar = False

    def summary(self, **fields):
        """The closing line. images_per_second None (no steady state) is said in words,
        with why (rate_note), never as a misleading 0 or a bare n/a."""
        self.close()
        if self.log_json:
            self._json("summary", **fields)
            return
        if self.quiet:
            return
        note = fields.pop("rate_note", None)
        parts = []
        for key, value in fields.items():
            if key == "images_per_second" and value is None:
                parts.append("images per second not measured"
                             + (f" ({note})" if note else ""))
            else:
                parts.append(f"{key.replace('_', ' ')} {'n/a' if value is None else value}")
        self._line("sightline: done: " + ", ".join(parts))

    # ------------------------------------------------------------------ output

    def _status(self):
        rate = self.rate()
        total = self.total if self.total is not None else "?"
        if rate is None:
            startup = (self.first_batch or self.clock()) - self.started
            return f"{self.done}/{total} images, start-up {startup:.1f} s"
        text = f"{self.done}/{total} images, {rate:.1f} img/s"
        if self.total is not None:
            text += f", eta {max(self.total - self.done, 0) / rate:.0f} s"
        return text

    def _show(self, now):
        if self.quiet:
            return
        if self.bar:
            if now - self.last_draw >= BAR_SECONDS or self.done == self.total:
                self._draw()
            return
        if now - self.last_line >= self.every:
            self.last_line = now
            if self.log_json:
                rate = self.rate()
                fields = {"images": self.done, "total": self.total,
                          "images_per_second": None if rate is None else round(rate, 2)}
                if rate is not None and self.total is not None:
                    fields["eta_seconds"] = round(max(self.total - self.done, 0) / rate, 1)
                self._json("progress", **fields)
            else:
                self._line(f"sightline: {self._status()}")

    def _draw(self, force=False):
        self.last_draw = self.clock()
        filled = (BAR_WIDTH if not self.total else
                  min(BAR_WIDTH, BAR_WIDTH * self.done // self.total))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r\x1b[Ksightline: [{bar}] {self._status()}")
        self.stream.flush()
        self.bar_shown, self.status_shown = True, False

    def _line(self, text):
        if self.status_shown:
            self.stream.write("\r\x1b[K")
            self.status_shown = False
        if self.bar and self.bar_shown:
            self.stream.write("\r\x1b[K" + text + "\n")
            self._draw()
        else:
            print(text, file=self.stream, flush=True)

    def _json(self, kind, **fields):
        print(json.dumps({"event": kind, **fields}, sort_keys=True), file=self.stream, flush=True)


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
