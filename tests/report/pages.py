"""Reading the report pages back: the HTML parsed, the embedded PNGs checked."""

import html.parser

import tensorflow as tf


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Collector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.links, self.tags, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.sources.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not value.startswith(("http:", "https:", "//")), value

    def handle_data(self, data):
        self.text.append(data)


def parse(path):
    collector = Collector()
    with open(path, encoding="utf-8") as handle:
        collector.feed(handle.read())
    return collector


def assert_png(data):
    assert data[:8] == PNG_SIGNATURE
    image = tf.io.decode_png(data).numpy()  # raises on a broken file
    assert image.ndim == 3 and image.shape[0] > 10 and image.shape[1] > 10
    return image
