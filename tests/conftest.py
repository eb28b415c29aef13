import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices for the whole session, so multi-device runs (MirroredStrategy
# over 2 replicas) can be tested in-process; this must happen before any TensorFlow
# work initialises the runtime. Ops still run on CPU:0 unless a strategy spreads them.
TEST_DEVICES = 2
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * TEST_DEVICES)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
