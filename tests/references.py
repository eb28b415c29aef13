"""References written differently from the code they check, shared by several test folders."""

import numpy as np


def reference_bilinear(maps, size):
    """Bilinear with half-pixel centres: output pixel i samples the input at
    (i + 0.5) * in / out - 0.5, clamped to the edge pixels."""
    maps = np.asarray(maps, np.float64)
    out_h, out_w = size
    in_h, in_w = maps.shape[1:]
    out = np.zeros((len(maps), out_h, out_w))

    def source(i, n_in, n_out):
        position = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        low = int(np.floor(position))
        high = min(low + 1, n_in - 1)
        return low, high, position - low

    for b in range(len(maps)):
        for i in range(out_h):
            y0, y1, fy = source(i, in_h, out_h)
            for j in range(out_w):
                x0, x1, fx = source(j, in_w, out_w)
                top = maps[b, y0, x0] * (1 - fx) + maps[b, y0, x1] * fx
                bottom = maps[b, y1, x0] * (1 - fx) + maps[b, y1, x1] * fx
                out[b, i, j] = top * (1 - fy) + bottom * fy
    return out


def eager_drops(model, images, region, target):
    """Reference: one image at a time, the box filled pixel by pixel with the image's mean
    colour summed by hand, the model called eagerly."""
    height, width = images.shape[1:3]
    top, bottom = int(round(region[0] * height)), int(round(region[1] * height))
    left, right = int(round(region[2] * width)), int(round(region[3] * width))
    drops, changed = [], []
    for image in images.astype(np.float64):
        ablated = image.copy()
        for channel in range(image.shape[2]):
            colour = sum(image[y, x, channel] for y in range(height) for x in range(width))
            colour /= height * width
            for y in range(top, bottom):
                for x in range(left, right):
                    ablated[y, x, channel] = colour
        before = model(image[None].astype(np.float32)).numpy()[0]
        after = model(ablated[None].astype(np.float32)).numpy()[0]
        drops.append(before[target] - after[target])
        changed.append(before.argmax() != after.argmax())
    return float(np.mean(drops)), float(np.mean(changed))
