"""CAM-family kernels: maps at the target layer's resolution.

Every function takes the target-layer activations and returns one map per image.
Arithmetic is float32 whatever the model's compute dtype: bfloat16 and float16 lose
too much in the channel sums of deep layers (K is 1280 on MobileNetV2).
"""

import tensorflow as tf


def cam(activations, class_weights):
    """Class activation map (Zhou et al. 2016) for a GAP + dense head.

    activations[B,h,w,K], class_weights[B,K] (the dense kernel's column of each
    image's explained class) -> heatmaps[B,h,w] = sum_k W[k,c] * A[...,k]. Signed:
    no ReLU, no bias, no division by h*w.
    """
    activations = tf.cast(activations, tf.float32)
    class_weights = tf.cast(class_weights, tf.float32)
    return tf.einsum("bhwk,bk->bhw", activations, class_weights)


def gradcam(activations, activation_grads):
    """Grad-CAM (Selvaraju et al. 2017).

    activations[B,h,w,K], activation_grads[B,h,w,K] (d y_c / d A) -> heatmaps[B,h,w]
    = ReLU(sum_k alpha[k] * A[...,k]) with alpha[k] = mean_ij d y_c / d A[i,j,k].
    """
    activations = tf.cast(activations, tf.float32)
    activation_grads = tf.cast(activation_grads, tf.float32)
    channel_weights = tf.reduce_mean(activation_grads, axis=(1, 2))  # [B,K]
    return tf.nn.relu(tf.einsum("bhwk,bk->bhw", activations, channel_weights))


def gradcam_plus_plus(activations, activation_grads):
    """Grad-CAM++ (Chattopadhyay et al. 2018), closed-form weights.

    activations[B,h,w,K], activation_grads[B,h,w,K] (g = d y_c / d A) -> heatmaps[B,h,w].

    With the exponential trick (explain exp(y_c)) and a piecewise-linear network, the
    higher derivatives are exp(y_c) g^2 and exp(y_c) g^3, and
        alpha[i,j,k] = g^2 / (2 g^2 + sum_ab A[a,b,k] g^3)
        w[k]         = sum_ij alpha[i,j,k] * ReLU(g[i,j,k])
        map          = ReLU(sum_k w[k] A[...,k]).
    The common factor exp(y_c) cancels in alpha and is left out of w: it is one
    positive number per image, so it changes only the map's scale, and in float32 it
    overflows for logits above 88.
    """
    activations = tf.cast(activations, tf.float32)
    grads = tf.cast(activation_grads, tf.float32)
    grads_squared = tf.square(grads)
    activation_sums = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)  # [B,1,1,K]
    denominator = 2.0 * grads_squared + activation_sums * grads_squared * grads
    # Where g == 0 the numerator is 0 too: alpha is defined as 0 there.
    alphas = tf.math.divide_no_nan(grads_squared, denominator)  # [B,h,w,K]
    channel_weights = tf.reduce_sum(alphas * tf.nn.relu(grads), axis=(1, 2))  # [B,K]
    return tf.nn.relu(tf.einsum("bhwk,bk->bhw", activations, channel_weights))


def scorecam(score_fn, images, targets, activations, *, channels_per_call=None):
    """Score-CAM (Wang et al. 2020): channels weighed by the score of the masked input.

    images[B,H,W,C], targets[B], activations[B,h,w,K] -> heatmaps[B,h,w].
    score_fn(images[n,H,W,C], targets[n]) -> scores[n]: the engine passes the softmax
    probability of the target class, as the paper does (logits would let one
    channel's weight grow without bound).

    Each channel's map is upsampled to the input (bilinear), scaled to [0, 1] and
    multiplies the input; w[k] = score_fn(x * mask_k); map = ReLU(sum_k w[k] A[...,k]).
    Channels are folded into the batch, `channels_per_call` at a time (all when None),
    and only a chunk's masks exist at once: all K masks at input size would be
    K times the batch (1280x on MobileNetV2).
    """
    from sightline.kernels.postprocess import scale_to_unit_range
    images = tf.cast(images, tf.float32)
    activations = tf.cast(activations, tf.float32)
    num_channels = activations.shape[-1]
    chunk = num_channels if channels_per_call is None else max(1, min(int(channels_per_call),
                                                                      num_channels))
    num_chunks = -(-num_channels // chunk)
    input_size = tf.shape(images)[1:3]
    tiled_targets = tf.tile(tf.reshape(targets, [-1]), [chunk])  # [chunk*B]

    def chunk_scores(chunk_index):
        # The last chunk may run past K: repeat a real channel, drop its score below.
        channel_ids = tf.minimum(chunk_index * chunk + tf.range(chunk), num_channels - 1)
        maps = tf.gather(activations, channel_ids, axis=-1)  # [B,h,w,chunk]
        masks = scale_to_unit_range(tf.image.resize(maps, input_size, method="bilinear"),
                                    axis=(1, 2))  # [B,H,W,chunk]
        masks = tf.transpose(masks, [3, 0, 1, 2])[..., None]  # [chunk,B,H,W,1]
        masked = tf.reshape(images[None] * masks, tf.concat([[-1], tf.shape(images)[1:]], 0))
        scores = tf.cast(score_fn(masked, tiled_targets), tf.float32)  # [chunk*B]
        return tf.reshape(scores, [chunk, -1])  # [chunk,B]

    collected = tf.TensorArray(tf.float32, size=num_chunks)
    _, collected = tf.while_loop(
        lambda i, _: i < num_chunks,
        lambda i, acc: (i + 1, acc.write(i, chunk_scores(i))),
        (tf.constant(0), collected))
    weights = tf.reshape(collected.stack(), [num_chunks * chunk, -1])[:num_channels]  # [K,B]
    return tf.nn.relu(tf.einsum("bhwk,kb->bhw", activations, weights))


def layercam(activations, activation_grads):
    """LayerCAM (Jiang et al. 2021): positive gradients weigh each position.

    activations[B,h,w,K], activation_grads[B,h,w,K] (d y_c / d A) -> heatmaps[B,h,w]
    = ReLU(sum_k ReLU(d y_c / d A[...,k]) * A[...,k]).
    """
    activations = tf.cast(activations, tf.float32)
    activation_grads = tf.cast(activation_grads, tf.float32)
    return tf.nn.relu(tf.reduce_sum(tf.nn.relu(activation_grads) * activations, axis=-1))


def hirescam(activations, activation_grads):
    """HiResCAM (Draelos & Carin 2020): the gradient weighs each position, unaveraged.

    activations[B,h,w,K], activation_grads[B,h,w,K] -> heatmaps[B,h,w]
    = ReLU(sum_k d y_c / d A[...,k] * A[...,k]).
    """
    activations = tf.cast(activations, tf.float32)
    activation_grads = tf.cast(activation_grads, tf.float32)
    return tf.nn.relu(tf.reduce_sum(activation_grads * activations, axis=-1))


def xgradcam(activations, activation_grads):
    """XGrad-CAM (Fu et al. 2020): gradients averaged with the activations as weights.

    activations[B,h,w,K], activation_grads[B,h,w,K] -> heatmaps[B,h,w]
    = ReLU(sum_k alpha[k] * A[...,k]),
    alpha[k] = sum_ij (A[i,j,k] / sum_ab A[a,b,k]) * d y_c / d A[i,j,k].
    A channel whose activations sum to 0 gets alpha 0 (its normalisation is undefined).
    """
    activations = tf.cast(activations, tf.float32)
    activation_grads = tf.cast(activation_grads, tf.float32)
    channel_sums = tf.reduce_sum(activations, axis=(1, 2))  # [B,K]
    weighted = tf.reduce_sum(activations * activation_grads, axis=(1, 2))  # [B,K]
    channel_weights = tf.math.divide_no_nan(weighted, channel_sums)  # [B,K]
    return tf.nn.relu(tf.einsum("bhwk,bk->bhw", activations, channel_weights))


def eigencam(activations):
    """Eigen-CAM (Muhammad & Yeasin 2020): the first principal component of the
    activations over positions. Forward only, class-agnostic.

    activations[B,h,w,K] -> heatmaps[B,h,w] = ReLU(X v), X the activations [h*w,K]
    with each channel's mean over positions removed, v its first right singular vector.

    X v = s u, with u the top eigenvector of the Gram matrix X X^T [h*w,h*w] and s^2 its
    eigenvalue: h*w (49 on a 224-pixel ResNet50) is far smaller than K (2048), so the
    eigen-decomposition runs on the Gram matrix, never on the K x K covariance.
    A singular vector has no sign of its own. The rule: the projection correlates
    positively with the channel-mean map mean_k A[...,k] (the sign that makes the map
    look like the activations); a projection orthogonal to it keeps eigh's sign.
    """
    activations = tf.cast(activations, tf.float32)
    shape = tf.shape(activations)
    positions = tf.reshape(activations, [shape[0], -1, shape[3]])  # [B,h*w,K]
    centred = positions - tf.reduce_mean(positions, axis=1, keepdims=True)  # [B,h*w,K]
    gram = tf.matmul(centred, centred, transpose_b=True)  # [B,h*w,h*w]
    eigenvalues, eigenvectors = tf.linalg.eigh(gram)  # ascending: the last is the largest
    top_value = tf.nn.relu(eigenvalues[:, -1])  # [B]; rounding can make 0 slightly negative
    projection = eigenvectors[:, :, -1] * tf.sqrt(top_value)[:, None]  # [B,h*w]
    channel_mean = tf.reduce_mean(positions, axis=2)  # [B,h*w]
    # The projection sums to 0 (X is centred), so its dot product with the channel-mean
    # map is its covariance with it.
    agreement = tf.reduce_sum(projection * channel_mean, axis=1, keepdims=True)  # [B,1]
    projection = tf.where(agreement < 0, -projection, projection)
    return tf.nn.relu(tf.reshape(projection, shape[:3]))


def channel_relevance(activations, activation_grads):
    """Each channel's first-order contribution to the explained score, pooled over
    positions: r[b,k] = sum_ij A[b,i,j,k] * dy_c/dA[b,i,j,k] (gradient x activation).

    activations[B,h,w,K], activation_grads[B,h,w,K] -> relevance[B,K] float32. Where the
    evidence sits does not enter: a mark anywhere in the image, a tint or a texture lights
    the same channels wherever it is, which the audit's "what" view clusters on.
    """
    activations = tf.cast(activations, tf.float32)
    activation_grads = tf.cast(activation_grads, tf.float32)
    return tf.reduce_sum(activations * activation_grads, axis=[1, 2])  # [B,K]


def cam_channel_relevance(activations, class_weights):
    """channel_relevance without a gradient, for a global-average-pooling + dense head:
    there dy_c/dA[i,j,k] = W[k,c] / (h*w), so r[b,k] = W[k,c] * mean_ij A[b,i,j,k].

    activations[B,h,w,K], class_weights[B,K] (the dense kernel's column of each explained
    class) -> relevance[B,K] float32.
    """
    pooled = tf.reduce_mean(tf.cast(activations, tf.float32), axis=[1, 2])  # [B,K]
    return tf.cast(class_weights, tf.float32) * pooled
