"""The one strategy factory: MirroredStrategy over the chosen devices.

With one device MirroredStrategy is a no-op, never a different code path. On a
machine without GPUs, `devices=N` splits the CPU into N logical devices, which must
happen before TensorFlow initialises its runtime.
"""

import tensorflow as tf

from sightline.config import parse_devices
from sightline.errors import UsageError


def make_strategy(devices="all"):
    """MirroredStrategy over `devices` GPUs, or logical CPU devices when there are none."""
    devices = parse_devices(devices)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = [d.name for d in tf.config.list_logical_devices("GPU")]
        if devices != "all":
            if devices > len(names):
                raise UsageError(f"devices={devices} but this machine has {len(names)} GPU(s)")
            names = names[:devices]
        return tf.distribute.MirroredStrategy(devices=names)
    if devices != "all" and devices > 1:
        # Listing logical devices initialises the runtime, after which they cannot be
        # split: configure first, then list.
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * devices)
        except RuntimeError:
            pass  # already initialised: fine if it already has enough devices
    cpu_names = [d.name for d in tf.config.list_logical_devices("CPU")]
    wanted = len(cpu_names) if devices == "all" else devices
    if len(cpu_names) < wanted:
        raise UsageError(f"devices={wanted} needs {wanted} logical CPU devices, but TensorFlow "
                         f"is already initialised with {len(cpu_names)}; choose the device "
                         "count before any TensorFlow work")
    return tf.distribute.MirroredStrategy(devices=cpu_names[:wanted])
