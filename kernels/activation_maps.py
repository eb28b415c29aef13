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
